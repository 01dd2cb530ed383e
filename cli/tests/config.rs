//! `lcserve --config FILE` on the real binary: a subcommand's table supplies its flags, and a
//! key no flag has is refused naming it.

use std::process::Command;

fn lcserve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lcserve")).args(args).env_remove("LCSERVE_CONFIG").output().expect("run lcserve")
}

#[test]
fn a_config_table_supplies_the_subcommand_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("tiny");
    let config = dir.path().join("lcserve.toml");
    let out_text = out.to_str().expect("utf-8");
    std::fs::write(&config, format!("log_format = \"json\"\n[model.tiny]\nout = {out_text:?}\nseed = 3\n"))
        .expect("write");
    let run = lcserve(&["--config", config.to_str().expect("utf-8"), "model", "tiny"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(printed.lines().next().is_some_and(|gguf| gguf.starts_with(out_text)), "{printed}");
    assert!(out.exists());

    std::fs::write(&config, "[model.tiny]\nout = \"x\"\nsede = 3\n").expect("write");
    let run = lcserve(&["--config", config.to_str().expect("utf-8"), "model", "tiny"]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("`sede` in [model.tiny]: `tiny` has no flag --sede"), "{stderr}");
}
