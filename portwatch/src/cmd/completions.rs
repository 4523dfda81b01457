//! `portwatch completions SHELL` and `portwatch manpages --dir DIR`: shell
//! completion scripts and man pages generated from the CLI definition
//! itself, so they never disagree with `--help`. The Debian package ships
//! both (`cargo xtask package` runs these).

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs, ManpagesArgs};

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    // clap_complete panics when its writer fails: write a buffer instead,
    // so that a closed pipe ends quietly like everywhere else.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "portwatch", &mut script);
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// Writes `portwatch.1` and one `portwatch-SUBCOMMAND.1` per subcommand.
pub fn write_manpages(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.name(name.clone()))
            .render(&mut buf)
            .with_context(|| format!("cannot render the man page {name}"))?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone(), format!("portwatch-{}", sub.get_name()))?;
    }
    page(cmd, "portwatch".to_owned())?;
    Ok(written)
}

pub fn manpages(args: ManpagesArgs) -> anyhow::Result<()> {
    let written = write_manpages(&args.dir)?;
    let mut out = io::stdout().lock();
    for p in written {
        writeln!(out, "{}", p.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_man_page_per_subcommand_from_the_cli_definition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_manpages(dir.path()).expect("pages");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for want in [
            "portwatch.1",
            "portwatch-trace.1",
            "portwatch-record.1",
            "portwatch-who.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("manpages")),
            "hidden: {names:?}"
        );
        let who = std::fs::read_to_string(dir.path().join("portwatch-who.1")).expect("who");
        assert!(who.starts_with(".ie") || who.contains(".TH"), "{who}");
        assert!(who.contains("\\-\\-count"), "options from the CLI: {who}");
    }

    #[test]
    fn completions_know_the_subcommands_and_options() {
        let mut cmd = Cli::command();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "portwatch", &mut bash);
        let bash = String::from_utf8(bash).expect("utf-8");
        for word in ["trace", "who", "doctor", "--summary-only", "--utc", "--to"] {
            assert!(bash.contains(word), "{word}");
        }
    }
}
