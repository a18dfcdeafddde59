//! What tests need of the operating system: a free port, a temporary directory, whether a
//! process is dead.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A port that was free a moment ago (for the real binary, which must be told where to listen).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "fiddler_crab-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `contents` to `name` inside it; returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).expect("write a temp file");
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// True if process `pid` no longer runs: it does not exist, or it is a zombie awaiting its reaper.
pub fn is_dead(pid: i32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the first field after the parenthesised command name.
    match stat.rsplit_once(')') {
        Some((_, rest)) => matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None),
        None => true,
    }
}

/// A FIFO named `name` in `dir`: a program or worker blocks reading it until the test writes a
/// line with [`release_fifo`].
pub fn make_fifo(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(name);
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo failed");
    path
}

/// Write one line into `fifo` once its reader has it open. The open never blocks (`O_NONBLOCK`
/// fails with `ENXIO` while nobody reads; it is tried again), so a reader that never comes fails
/// the test at the patience bound instead of leaving a blocked thread that the runtime's
/// shutdown would wait for forever.
///
/// Release each FIFO once: a program that waits twice must wait on two FIFOs. If it reopens the
/// same FIFO after reading the line, that open can come while this writer is still open (the
/// test's thread preempted between the write and the close, as on a loaded CI machine); the
/// open then succeeds at once, the close that follows leaves the reader an end of file, and the
/// program runs past its second wait before the test releases it.
pub async fn release_fifo(fifo: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = async {
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(fifo)
            {
                Ok(file) => return file,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                Err(e) => panic!("open {}: {e}", fifo.display()),
            }
        }
    };
    let mut file = super::within("the FIFO's reader", opened).await;
    // One short line into an empty pipe: written whole, never blocks.
    file.write_all(b"go\n").expect("write the FIFO");
}
