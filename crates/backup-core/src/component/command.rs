use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::files::applicable_if;
use super::{
    Applicability, Committed, Component, EntryMeta, EntrySink, NothingToUndo, RestoreContext,
    SnapshotError,
};

/// Archive name of a command component's dump, relative to the component.
pub(crate) const DUMP_ENTRY: &str = "dump";

/// A dump command whose standard output is the snapshot (`pg_dump`,
/// `mysqldump`, …) and a restore command fed that dump on standard input.
/// A non-zero exit status fails the component.
///
/// The dump is spooled to a private scratch file first, because a tar entry
/// must declare its size before its content; that file is removed afterwards.
#[derive(Debug, Clone)]
pub struct CommandComponent {
    name: String,
    backup: Vec<String>,
    restore: Vec<String>,
    applicable_if_exists: Option<PathBuf>,
}

impl CommandComponent {
    /// A component running `backup` (argv) to dump and `restore` (argv) to load.
    pub fn new(
        name: impl Into<String>,
        backup: Vec<String>,
        restore: Vec<String>,
        applicable_if_exists: Option<PathBuf>,
    ) -> CommandComponent {
        CommandComponent {
            name: name.into(),
            backup,
            restore,
            applicable_if_exists,
        }
    }
}

/// Runs a command, collecting the tail of its standard error.
fn run(argv: &[String], stdin: Stdio, stdout: Stdio) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let shown = argv.join(" ");
    let mut cmd = Command::new(program);
    // `run` waits for the child on the thread that spawns it (see die_with_engine).
    crate::util::die_with_engine(&mut cmd);
    // Dump and restore commands never need the domain secret.
    crate::util::without_secrets(&mut cmd);
    let mut child = cmd
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let mut stderr = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    let status = child
        .wait()
        .map_err(|e| format!("`{shown}` could not be waited for: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(2048)..])
        .trim()
        .to_string();
    Err(format!(
        "`{shown}` exited with {status}{}",
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    ))
}

impl Component for CommandComponent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &str {
        "command"
    }

    fn roots(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn applicability(&self) -> Applicability {
        applicable_if(&self.applicable_if_exists)
    }

    fn estimate_size(&self) -> Option<u64> {
        None
    }

    fn snapshot(&self, sink: &mut dyn EntrySink, scratch: &Path) -> Result<(), SnapshotError> {
        let spool = scratch.join(format!("{}.dump-{}", self.name, crate::util::random_tag()));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&spool)
                .map_err(|e| {
                    SnapshotError::Failed(format!(
                        "cannot create scratch file {}: {e}",
                        spool.display()
                    ))
                })?;
            run(&self.backup, Stdio::null(), Stdio::from(out)).map_err(SnapshotError::Failed)?;
            let mut file = std::fs::File::open(&spool).map_err(|e| {
                SnapshotError::Failed(format!("cannot reopen {}: {e}", spool.display()))
            })?;
            let size = file
                .metadata()
                .map_err(|e| SnapshotError::Failed(e.to_string()))?
                .len();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let meta = EntryMeta {
                mode: 0o600,
                mtime: now,
                uid: 0,
                gid: 0,
            };
            sink.file(Path::new(DUMP_ENTRY), &meta, size, &mut file)
        })();
        let _ = std::fs::remove_file(&spool);
        result
    }

    fn restore(&self, ctx: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        let dump = ctx.staged.join(DUMP_ENTRY);
        if let Some(target) = ctx.target {
            // Inspection restore: leave the dump beside the restored trees.
            let dest = target.join(format!("{}.dump", self.name));
            std::fs::create_dir_all(target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            std::fs::copy(&dump, &dest)
                .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
            return Ok(Box::new(NothingToUndo));
        }
        if self.restore.is_empty() {
            return Err(format!(
                "component {} has no restore command in the configuration; restore it with --target DIR to get the dump file",
                self.name
            ));
        }
        let input =
            std::fs::File::open(&dump).map_err(|e| format!("cannot open the staged dump: {e}"))?;
        run(&self.restore, Stdio::from(input), Stdio::null())?;
        Ok(Box::new(NothingToUndo))
    }
}
