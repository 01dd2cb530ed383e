//! `--config FILE` (or `LCSERVE_CONFIG`): flag values from a TOML file, one table per
//! subcommand.
//!
//! ```toml
//! log_format = "json"          # global flags at the top level
//!
//! [router]
//! decode = ["http://decode-0:50061", "http://decode-1:50061"]
//! policy = "kv-aware"
//!
//! [decode]
//! kv_cache_bytes = 4294967296
//!
//! [bench.serve]                # nested subcommands nest their tables
//! concurrency = 16
//! ```
//!
//! Keys are long flag names (`kv_cache_bytes` or `kv-cache-bytes`). Precedence: the command
//! line, then a flag's environment variable, then the file, then the built-in default. The
//! file is applied by rewriting the command line before clap parses it — each value becomes
//! the flag it names, inserted after its subcommand — so clap validates and converts file
//! values exactly as typed ones and its errors name the flag. A key no flag of its table's
//! subcommand has, a table for a subcommand that does not exist, and a value that is not a
//! scalar or an array of scalars are errors naming the key.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Arg, ArgAction};
use toml::{Table, Value};

/// The flag that names the file, and its environment twin.
const FLAG: &str = "config";
const ENV: &str = "LCSERVE_CONFIG";

/// `args` (program name first) with the values of the config file, if one is named, added as
/// flags; unchanged without one. `root` is the program's clap command.
pub fn apply(root: clap::Command, args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else { return Ok(args) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("--config {}", path.display()))?;
    let table: Table = text.parse().with_context(|| format!("--config {}", path.display()))?;
    let mut root = root;
    root.build();
    let chain = invoked_chain(&root, &args);

    let mut out = args.clone();
    // Insert deepest first, so earlier insertion points stay valid.
    let mut levels = Vec::new();
    let (mut command, mut table, mut section) = (&root, &table, String::new());
    levels.push((command, table, section.clone(), 1));
    for &(ref name, insert_at) in &chain {
        let Some(sub) = table.get(name) else { break };
        let Value::Table(sub) = sub else { bail!("--config {}: `{name}` must be a table", path.display()) };
        command = command.find_subcommand(name).context("subcommand vanished")?;
        table = sub;
        section = if section.is_empty() { name.clone() } else { format!("{section}.{name}") };
        levels.push((command, table, section.clone(), insert_at));
    }
    for (command, table, section, _) in &levels {
        check_sections(command, table, section)?;
    }
    for (command, table, section, insert_at) in levels.into_iter().rev() {
        let flags =
            flags_for(command, table, &section, &args).with_context(|| format!("--config {}", path.display()))?;
        out.splice(insert_at..insert_at, flags);
    }
    Ok(out)
}

/// `--config PATH`, `--config=PATH`, or `LCSERVE_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let long = format!("--{FLAG}");
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == long {
            return iter.next().map(PathBuf::from);
        }
        if let Some(value) = text.strip_prefix(&format!("{long}=")) {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os(ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The subcommands on the command line, outermost first, each with the index just after it.
fn invoked_chain(root: &clap::Command, args: &[OsString]) -> Vec<(String, usize)> {
    let mut chain = Vec::new();
    let mut command = root;
    let mut index = 1;
    while index < args.len() {
        let text = args[index].to_string_lossy();
        if let Some(flag) = text.strip_prefix("--") {
            let takes_value = !flag.contains('=') && long_arg(command, flag).is_some_and(takes_value);
            index += 1 + usize::from(takes_value);
            continue;
        }
        if text.starts_with('-') {
            index += 1;
            continue;
        }
        match command.find_subcommand(text.as_ref()) {
            Some(sub) => {
                command = sub;
                chain.push((sub.get_name().to_owned(), index + 1));
                index += 1;
            }
            None => break,
        }
    }
    chain
}

/// Tables of a level must name subcommands of its command.
fn check_sections(command: &clap::Command, table: &Table, section: &str) -> anyhow::Result<()> {
    for (key, value) in table {
        if matches!(value, Value::Table(_)) && command.find_subcommand(key).is_none() {
            let at = if section.is_empty() { String::new() } else { format!(" in [{section}]") };
            bail!("[{key}]{at}: `{}` has no subcommand `{key}`", command.get_name());
        }
    }
    Ok(())
}

/// The flags `table`'s scalar keys stand for, leaving out those the command line or the
/// environment already set.
fn flags_for(
    command: &clap::Command,
    table: &Table,
    section: &str,
    args: &[OsString],
) -> anyhow::Result<Vec<OsString>> {
    let place = if section.is_empty() { "at the top level".to_owned() } else { format!("in [{section}]") };
    let mut flags = Vec::new();
    for (key, value) in table {
        if matches!(value, Value::Table(_)) {
            continue;
        }
        let long = key.replace('_', "-");
        let arg = long_arg(command, &long)
            .filter(|_| !matches!(long.as_str(), FLAG | "help" | "version"))
            .with_context(|| format!("`{key}` {place}: `{}` has no flag --{long}", command.get_name()))?;
        if given_on_command_line(args, &long) || arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
            continue;
        }
        let flag = OsString::from(format!("--{long}"));
        let values = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for item in values {
            let text = scalar(item).with_context(|| format!("`{key}` {place}: not a scalar or an array of scalars"))?;
            match (arg.get_action(), item) {
                (ArgAction::SetTrue, Value::Boolean(true)) | (ArgAction::SetFalse, Value::Boolean(false)) => {
                    flags.push(flag.clone());
                }
                (ArgAction::SetTrue | ArgAction::SetFalse, Value::Boolean(_)) => {}
                (ArgAction::SetTrue | ArgAction::SetFalse, _) => bail!("`{key}` {place}: must be true or false"),
                _ => flags.extend([flag.clone(), OsString::from(text)]),
            }
        }
    }
    Ok(flags)
}

fn long_arg<'a>(command: &'a clap::Command, long: &str) -> Option<&'a Arg> {
    command.get_arguments().find(|arg| arg.get_long() == Some(long))
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values())
}

fn given_on_command_line(args: &[OsString], long: &str) -> bool {
    let exact = format!("--{long}");
    let prefix = format!("--{long}=");
    args.iter().map(|a| a.to_string_lossy()).any(|a| a == exact || a.starts_with(&prefix))
}

/// A TOML scalar as command-line text (strings without quotes).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(_) | Value::Array(_) | Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().expect("utf-8")).collect()
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true, default_value = "text")]
        log_format: String,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        Router {
            #[arg(long)]
            decode: Vec<String>,
            #[arg(long, default_value_t = 1)]
            threads: usize,
            #[arg(long)]
            verbose: bool,
            /// Always set in the environment, so the file never wins.
            #[arg(long, env = "PATH")]
            search: Option<String>,
        },
        #[command(subcommand)]
        Bench(Bench),
    }

    #[derive(Debug, Subcommand)]
    enum Bench {
        Serve {
            #[arg(long, default_value_t = 1)]
            concurrency: usize,
            prompt: Option<String>,
        },
    }

    fn with_file(toml: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lcserve.toml");
        std::fs::write(&path, toml).expect("write");
        let mut argv: Vec<OsString> = vec!["lcserve".into(), "--config".into(), path.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        let out = apply(Cli::command(), argv)?;
        // The program name and `--config PATH` (the file's root flags go before them).
        let mut out: Vec<String> = strings(&out).into_iter().skip(1).map(str::to_owned).collect();
        let at = out.iter().position(|a| a == "--config").expect("--config kept");
        out.drain(at..at + 2);
        Ok(out)
    }

    const FILE: &str = r#"
        log_format = "json"
        [router]
        decode = ["http://a:1", "http://b:2"]
        threads = 4
        verbose = true
        search = "ignored"
        [bench.serve]
        concurrency = 16
    "#;

    #[test]
    fn file_values_become_flags_after_their_subcommand() {
        let args = with_file(FILE, &["router"]).expect("apply");
        assert_eq!(
            args,
            [
                "--log-format",
                "json",
                "router",
                "--decode",
                "http://a:1",
                "--decode",
                "http://b:2",
                "--threads",
                "4",
                "--verbose"
            ]
        );
        let nested = with_file(FILE, &["bench", "serve", "PROMPT"]).expect("apply");
        assert_eq!(nested, ["--log-format", "json", "bench", "serve", "--concurrency", "16", "PROMPT"]);
    }

    #[test]
    fn the_command_line_and_the_environment_win() {
        let args = with_file(FILE, &["--log-format=text", "router", "--threads", "2"]).expect("apply");
        assert_eq!(
            args,
            [
                "--log-format=text",
                "router",
                "--decode",
                "http://a:1",
                "--decode",
                "http://b:2",
                "--verbose",
                "--threads",
                "2"
            ]
        );
        let cli = Cli::try_parse_from(["lcserve"].into_iter().chain(args.iter().map(String::as_str))).expect("parses");
        let Cmd::Router { threads, verbose, search, .. } = cli.command else { panic!("router") };
        assert_eq!((threads, verbose, cli.log_format.as_str()), (2, true, "text"));
        assert_eq!(search, std::env::var("PATH").ok(), "PATH is set, so `search` comes from it");
    }

    #[test]
    fn mistakes_are_errors_naming_the_key() {
        let error = |toml: &str| format!("{:#}", with_file(toml, &["router"]).expect_err("invalid"));
        assert!(error("[router]\nthreds = 4").contains("`threds` in [router]: `router` has no flag --threds"));
        assert!(error("[routr]\nthreads = 4").contains("[routr]: `lcserve` has no subcommand `routr`"));
        assert!(error("[router]\nverbose = 1").contains("`verbose` in [router]: must be true or false"));
        assert!(error("[router]\nthreads = { a = 1 }").contains("[threads] in [router]"));
        assert!(error("[router]\ndecode = [[1]]").contains("`decode` in [router]: not a scalar"));
        assert!(error("[router\n").contains("lcserve.toml"));
    }

    #[test]
    fn no_file_no_change() {
        let argv: Vec<OsString> = ["lcserve", "router", "--threads", "3"].iter().map(OsString::from).collect();
        if std::env::var_os(ENV).is_none() {
            assert_eq!(apply(Cli::command(), argv.clone()).expect("apply"), argv);
        }
    }
}
