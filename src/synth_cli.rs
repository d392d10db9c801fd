//! `ttsd synth`: in-process synthesis on the main thread, without a daemon.
//! (Owned by the engine lead.)
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// The voice: NAME.onnx (with NAME.onnx.json beside it).
    #[arg(long)]
    pub voice: PathBuf,
    /// Text to speak.
    #[arg(long, conflicts_with = "phoneme_ids", required_unless_present = "phoneme_ids")]
    pub text: Option<String>,
    /// Comma-separated phoneme ids instead of text.
    #[arg(long)]
    pub phoneme_ids: Option<String>,
    #[arg(long)]
    pub noise_scale: Option<f32>,
    #[arg(long)]
    pub length_scale: Option<f32>,
    #[arg(long)]
    pub noise_w: Option<f32>,
    #[arg(long)]
    pub speaker: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Skip peak normalisation.
    #[arg(long)]
    pub raw: bool,
    /// Output WAV file.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(_args: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
