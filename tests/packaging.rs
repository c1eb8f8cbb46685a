//! The Debian packaging: the config it installs passes `balp-agent check` (with its paths moved
//! into a temp dir), the maintainer scripts are valid `sh`, and every asset named in
//! `[package.metadata.deb]` exists (the binary is built by `cargo deb`).

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn packaged_config_passes_check() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("packaging/config.toml")).unwrap();
    assert!(text.contains("state_dir = \"/var/lib/balp-agent\""));
    assert!(text.contains("include = [\"/var/log/auth.log\"]"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let moved = text
        .replace("/var/lib/balp-agent", &format!("{d}/state"))
        .replace("/var/log/auth.log", &format!("{d}/auth.log"));
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, moved).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_balp-agent"))
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn maintainer_scripts_are_valid_sh() {
    for name in ["postinst", "prerm", "postrm"] {
        let path = Path::new(ROOT).join("packaging/debian").join(name);
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n") && text.contains("set -e"),
            "{name}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert!(mode & 0o111 != 0, "{name} is not executable");
        }
    }
}

#[test]
fn deb_metadata_names_existing_assets() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap())
            .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let mut targets = Vec::new();
    for a in assets {
        let a = a.as_array().unwrap();
        let (src, dst) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        targets.push(dst.to_owned());
        if !src.starts_with("target/") {
            assert!(Path::new(ROOT).join(src).is_file(), "missing asset {src}");
        }
    }
    for want in [
        "usr/bin/",
        "lib/systemd/system/",
        "etc/balp-agent/config.toml",
    ] {
        assert!(targets.iter().any(|t| t == want), "no asset goes to {want}");
    }
    assert_eq!(
        deb["conf-files"].as_array().unwrap()[0].as_str(),
        Some("/etc/balp-agent/config.toml")
    );
    let scripts = deb["maintainer-scripts"].as_str().unwrap();
    assert!(Path::new(ROOT).join(scripts).join("postinst").is_file());
}
