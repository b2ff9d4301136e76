//! The `postern queue` and `postern suppression` commands as a script runs them: a config
//! file naming the test's nats-server, the process's exit code and output.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::NatsServer;
use crate::relay::postern_binary;

/// One admin command (`queue`, `suppression`) with its config file.
#[derive(Debug)]
pub struct AdminCli {
    command: &'static str,
    config: tempfile::NamedTempFile,
}

impl AdminCli {
    /// `postern <command>` against `nats`, with `extra` YAML appended to the config.
    pub fn new(command: &'static str, nats: &NatsServer, extra: &str) -> AdminCli {
        let config = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            config.path(),
            format!(
                "hostname: admin.test\nnats: {{ url: \"{}\" }}\n{extra}",
                nats.url()
            ),
        )
        .expect("config written");
        AdminCli { command, config }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, b"")
    }

    /// Runs `args` with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(postern_binary())
            .args([self.command, "--config"])
            .arg(self.config.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("postern runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("input written");
        child.wait_with_output().expect("postern exits")
    }

    /// Runs `args` with `--json`, expecting `code`, and parses what it printed.
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let output = self.run(&all);
        expect_code(args, &output, code);
        serde_json::from_slice(&output.stdout).expect("JSON output")
    }

    /// Runs `args`, expecting `code`, and returns what it printed.
    pub fn text(&self, args: &[&str], code: i32) -> String {
        let output = self.run(args);
        expect_code(args, &output, code);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Asserts the exit code, showing both outputs when it is not.
pub fn expect_code(args: &[&str], output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
