//! Error text fit for clients: engine failures without build paths.
//!
//! MLX's exceptions end in the source location they were raised at, both
//! the C++ one (`... at /build/mlx-c/mlx/c/ops.cpp:45`) and mlx-rs's
//! (`"..." at /root/.cargo/registry/src/.../mlx-rs-0.33.0/src/ops.rs:12:5`),
//! which tell a client about the machine ttsd was built on and nothing about
//! its request. Here `at PATH:LINE` trailers are dropped and any other path
//! is cut to its file name; the full text stays in the worker's log. Pure
//! string work: it never logs, and never touches MLX itself.

/// `msg` without source locations and with paths cut to their file names.
pub fn for_client(msg: &str) -> String {
    // (whitespace before, token) pairs, so the spacing survives.
    let mut out: Vec<(&str, String)> = Vec::new();
    let mut rest = msg;
    let trailing = loop {
        let ws_len = rest.len() - rest.trim_start().len();
        let (ws, r) = rest.split_at(ws_len);
        if r.is_empty() {
            break ws;
        }
        let (token, r) = r.split_at(r.find(char::is_whitespace).unwrap_or(r.len()));
        rest = r;
        let (lead, core, trail) = split_punctuation(token);
        if !is_path(core) {
            out.push((ws, token.to_string()));
            continue;
        }
        let after_at = match out.last() {
            Some((_, t)) if split_punctuation(t).1 == "at" => out.pop(),
            _ => None,
        };
        match after_at {
            // `... at PATH:LINE`: the location goes, with its "at".
            Some((at_ws, at_token)) => {
                let (at_lead, _, _) = split_punctuation(&at_token);
                // A closing quote or bracket rejoins the text before it.
                match (at_lead.is_empty(), trail.is_empty()) {
                    (true, true) => {}
                    (true, false) => out.push(("", trail.to_string())),
                    (false, _) => out.push((at_ws, format!("{at_lead}{trail}"))),
                }
            }
            None => {
                let name = core.rsplit('/').next().unwrap_or(core);
                out.push((ws, format!("{lead}{name}{trail}")));
            }
        }
    };
    let mut s: String = out.iter().map(|(ws, t)| format!("{ws}{t}")).collect();
    s.push_str(trailing);
    s
}

/// Quotes and brackets around a token, apart from its core.
fn split_punctuation(token: &str) -> (&str, &str, &str) {
    let core = token.trim_start_matches(['(', '[', '<', '"', '\'', '`']);
    let lead = &token[..token.len() - core.len()];
    let inner = core.trim_end_matches([')', ']', '>', '"', '\'', '`', ',', ';']);
    (lead, inner, &core[inner.len()..])
}

/// An absolute path, or a relative one naming a source file, with or
/// without `:line[:column]`.
fn is_path(core: &str) -> bool {
    let mut base = core;
    for _ in 0..2 {
        match base.rsplit_once(':') {
            Some((b, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => base = b,
            _ => break,
        }
    }
    const SOURCE: [&str; 7] = [".rs", ".c", ".cc", ".cpp", ".h", ".hpp", ".cxx"];
    base.contains('/') && (base.starts_with('/') || base.starts_with("~/") || SOURCE.iter().any(|e| base.ends_with(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;

    #[test]
    fn internal_error_has_no_build_paths() {
        // A real MLX failure, as the engine reports it.
        let e = {
            let _mlx = crate::mlx_test_lock();
            let a = mlx_rs::Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
            EngineError::from(a.reshape(&[2, 2]).unwrap_err())
        };
        let full = e.to_string();
        assert!(full.contains('/'), "the raw text carries a location: {full}");
        let shown = for_client(&full);
        assert!(!shown.contains('/') && !shown.contains(".cargo"), "{shown}");
        assert!(shown.starts_with("mlx: ") && shown.contains("reshape"), "the message itself stays: {shown}");

        // mlx-c's own location inside the message, then mlx-rs's.
        let raw = "mlx: \"[flatten] Shape dimension 4598309088 is outside the supported range at \
                   /home/builder/.cargo/registry/src/index-1949cf8c6b5b557f/mlx-sys-0.7.0/src/mlx-c/mlx/c/ops.cpp:1622\" \
                   at /home/builder/.cargo/registry/src/index-1949cf8c6b5b557f/mlx-rs-0.33.0/src/ops/shapes.rs:95:5";
        assert_eq!(
            for_client(raw),
            "mlx: \"[flatten] Shape dimension 4598309088 is outside the supported range\""
        );
    }

    #[test]
    fn other_paths_are_cut_to_their_file_names_and_plain_text_is_kept() {
        assert_eq!(for_client("cannot open /home/build/x/libfoo.so: denied"), "cannot open libfoo.so: denied");
        assert_eq!(for_client("failed (src/engine/vits/ops.rs:12:3)"), "failed (ops.rs:12:3)");
        assert_eq!(for_client("error (at /a/b.cpp:3)"), "error ()");
        let plain = "output: the supervisor went away; 3/4 done at 12:30, ratio 1/2";
        assert_eq!(for_client(plain), plain);
        assert_eq!(for_client("  spaced\tout  "), "  spaced\tout  ");
    }
}
