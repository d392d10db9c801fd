//! `ttsctl say --play`: finding an audio player and feeding it.
//!
//! Owns the list of players and their command lines. Players that read
//! stdin (aplay, paplay, pw-play) get bare PCM as it arrives, so speech
//! starts after the first sentence; afplay (macOS) only plays files, so it
//! gets a temporary WAV once synthesis is done. It never writes anywhere
//! but a player's stdin or a temporary file it created itself.
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use thiserror::Error;

/// Players in order of preference.
pub const PLAYERS: [PlayerKind; 4] = [PlayerKind::Aplay, PlayerKind::Paplay, PlayerKind::PwPlay, PlayerKind::Afplay];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerKind {
    Aplay,
    Paplay,
    PwPlay,
    Afplay,
}

#[derive(Debug, Error)]
pub enum PlayerError {
    #[error(
        "--play needs an audio player, and none of aplay, paplay, pw-play, afplay is installed \
         (install alsa-utils, pulseaudio-utils or pipewire, or write a file with -o FILE)"
    )]
    NoneInstalled,
    #[error("cannot start {name}: {source}")]
    Spawn { name: &'static str, source: std::io::Error },
    #[error("{name} failed ({status})")]
    Failed { name: &'static str, status: std::process::ExitStatus },
}

impl PlayerKind {
    pub fn name(self) -> &'static str {
        match self {
            PlayerKind::Aplay => "aplay",
            PlayerKind::Paplay => "paplay",
            PlayerKind::PwPlay => "pw-play",
            PlayerKind::Afplay => "afplay",
        }
    }

    /// Whether it reads audio from stdin (else it gets a file at the end).
    pub fn reads_stdin(self) -> bool {
        self != PlayerKind::Afplay
    }

    /// The command that plays s16le mono PCM at `rate` from stdin, or the
    /// WAV file `file` (afplay).
    pub fn command(self, rate: u32, file: Option<&Path>) -> Command {
        let rate = rate.to_string();
        let mut c = Command::new(self.name());
        match self {
            PlayerKind::Aplay => c.args(["-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", &rate]),
            PlayerKind::Paplay => c.args(["--raw", "--format=s16le", "--channels=1", &format!("--rate={rate}")]),
            PlayerKind::PwPlay => c.args(["--format", "s16", "--channels", "1", "--rate", &rate, "-"]),
            PlayerKind::Afplay => c.arg(file.unwrap_or(Path::new("-"))),
        };
        c
    }
}

/// The first player on `path_var` (a `$PATH`-style list).
pub fn find_in(path_var: &std::ffi::OsStr) -> Option<(PlayerKind, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    for kind in PLAYERS {
        for dir in std::env::split_paths(path_var) {
            let p = dir.join(kind.name());
            if std::fs::metadata(&p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false) {
                return Some((kind, p));
            }
        }
    }
    None
}

/// The first player installed, or the error that says what to install.
pub fn find() -> Result<PlayerKind, PlayerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(&path).map(|(k, _)| k).ok_or(PlayerError::NoneInstalled)
}

/// A running player reading PCM from its stdin.
pub struct Player {
    kind: PlayerKind,
    child: Child,
}

impl Player {
    pub fn start(kind: PlayerKind, rate: u32) -> Result<(Self, ChildStdin), PlayerError> {
        let mut child = kind
            .command(rate, None)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| PlayerError::Spawn { name: kind.name(), source })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        Ok((Self { kind, child }, stdin))
    }

    /// Wait for the player to finish playing (its stdin must be closed first).
    pub fn wait(mut self) -> Result<(), PlayerError> {
        let status = self.child.wait().map_err(|source| PlayerError::Spawn { name: self.kind.name(), source })?;
        if status.success() {
            Ok(())
        } else {
            Err(PlayerError::Failed { name: self.kind.name(), status })
        }
    }
}

/// Play a finished WAV file with a file-only player (afplay).
pub fn play_file(kind: PlayerKind, file: &Path) -> Result<(), PlayerError> {
    let status = kind
        .command(0, Some(file))
        .status()
        .map_err(|source| PlayerError::Spawn { name: kind.name(), source })?;
    if status.success() {
        Ok(())
    } else {
        Err(PlayerError::Failed { name: kind.name(), status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finds_the_first_player_in_order_of_preference() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert!(find_in(&path).is_none());
        let exe = |dir: &Path, name: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        exe(a.path(), "pw-play", 0o755);
        exe(a.path(), "aplay", 0o644); // not executable: skipped
        assert_eq!(find_in(&path).unwrap().0, PlayerKind::PwPlay);
        exe(b.path(), "paplay", 0o755);
        assert_eq!(find_in(&path).unwrap().0, PlayerKind::Paplay);
        let c = PlayerKind::Aplay.command(22050, None);
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", "22050"]);
    }
}
