//! The command line: scenarios listed, bad arguments refused with status 2.
//! (Also makes `cargo test` build target/release/ttsd-stress, which
//! ./scripts/test then runs with `--scenario smoke`.)
use std::process::Command;

fn stress(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ttsd-stress")).args(args).output().unwrap()
}

#[test]
fn help_lists_the_scenarios() {
    let out = stress(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for s in ["smoke", "soak", "chaos", "backpressure", "hostile", "--kill-every", "--stop-every", "--json"] {
        assert!(text.contains(s), "{s} missing from --help");
    }
}

#[test]
fn bad_arguments_exit_2_before_starting_anything() {
    for args in [
        &["--scenario", "nope"][..],
        &["--workers", "0"],
        &["--faults", "crash,explode"],
        &["--ttsd", "/nonexistent/ttsd", "--requests", "1"],
    ] {
        let out = stress(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
