//! The worker pool and the I/O helper shared by parallel compression
//! ([`super::codec`]) and parallel decompression ([`super::parallel`]).
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Reads until `buf` is full or the source ends; returns the bytes read.
pub(crate) fn read_full<R: Read + ?Sized>(source: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match source.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}

/// Worker threads taking jobs from one queue; they stop (after their
/// current job) when the pool is dropped, whether the stream finished or
/// failed.
pub(crate) struct Pool<J> {
    name: String,
    jobs: Option<Sender<J>>,
    workers: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `threads` threads named `{name}-{i}`, each running `work` on
    /// the shared queue until it closes.
    pub(crate) fn start<F>(name: &str, threads: usize, work: F) -> io::Result<Pool<J>>
    where
        F: Fn(&Mutex<Receiver<J>>) + Send + Clone + 'static,
    {
        let (tx, rx) = mpsc::channel::<J>();
        let rx = Arc::new(Mutex::new(rx));
        let mut pool = Pool {
            name: name.to_string(),
            jobs: Some(tx),
            workers: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let (rx, work) = (rx.clone(), work.clone());
            pool.workers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&rx))?,
            );
        }
        Ok(pool)
    }

    pub(crate) fn send(&self, job: J) -> io::Result<()> {
        self.jobs
            .as_ref()
            .ok_or_else(|| self.died())?
            .send(job)
            .map_err(|_| self.died())
    }

    /// The error for a worker that went away without replying.
    pub(crate) fn died(&self) -> io::Error {
        io::Error::other(format!("a {} thread stopped unexpectedly", self.name))
    }
}

/// A worker's next job; `None` once the pool's queue is closed.
pub(crate) fn next_job<J>(jobs: &Mutex<Receiver<J>>) -> Option<J> {
    jobs.lock().ok()?.recv().ok()
}

impl<J> Drop for Pool<J> {
    fn drop(&mut self) {
        // Closing the queue ends each worker once its current block is done.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
