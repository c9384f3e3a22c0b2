//! Reading a file named by someone else (a plugin path in a config, a swap request), safely:
//! only a regular file is read, and only up to a cap.
//!
//! A path may name anything. `/dev/zero` never ends, so reading it to the end fills
//! memory until the OOM killer ends the server; a FIFO that nobody writes blocks the open
//! and then the read forever. So [`read`] opens without waiting (`O_NONBLOCK`, which an
//! open of a FIFO would otherwise wait on; `O_NOCTTY`, so that a terminal never becomes
//! the server's), asks the open descriptor (not the path, which may change in between)
//! what it is, refuses anything but a regular file, and reads at most `cap` bytes, so a
//! file larger than the cap is refused without being read whole. This module imports
//! nothing of ours and knows nothing of what the bytes are.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening, inspecting or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The path names something other than a regular file.
    #[error("not a regular file ({0})")]
    NotRegular(Kind),
    /// The file holds more than the cap.
    #[error("{size} bytes, more than the {cap} bytes allowed")]
    TooLarge {
        /// How large the file is (at least; it may have grown while read).
        size: u64,
        /// The most bytes the caller accepts.
        cap: u64,
    },
}

/// What a path names, when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A named pipe.
    Fifo,
    /// A character device, such as `/dev/zero` or a terminal.
    CharDevice,
    /// A block device, such as a disk.
    BlockDevice,
    /// A Unix domain socket.
    Socket,
    /// Something this module has no name for.
    Other,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Directory => "a directory",
            Kind::Fifo => "a FIFO",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Socket => "a socket",
            Kind::Other => "neither a file nor a directory",
        })
    }
}

/// The whole content of the regular file at `path`, if it holds at most `cap` bytes.
pub fn read(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let (file, metadata) = open(path)?;
    read_open(file, &metadata, cap)
}

/// The regular file at `path`, opened for reading without waiting, and what its open
/// descriptor says about it (owner, mode, size): for a caller that checks more
/// before it reads with [`read_open`].
pub fn open(path: &Path) -> Result<(File, Metadata), ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC)
        .open(path)?;
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok((file, metadata));
    }
    let kind = if kind.is_dir() {
        Kind::Directory
    } else if kind.is_fifo() {
        Kind::Fifo
    } else if kind.is_char_device() {
        Kind::CharDevice
    } else if kind.is_block_device() {
        Kind::BlockDevice
    } else if kind.is_socket() {
        Kind::Socket
    } else {
        Kind::Other
    };
    Err(ReadError::NotRegular(kind))
}

/// The content of `file`, opened by [`open`] (which gave `metadata`), if it holds at
/// most `cap` bytes.
pub fn read_open(file: File, metadata: &Metadata, cap: u64) -> Result<Vec<u8>, ReadError> {
    if metadata.len() > cap {
        return Err(ReadError::TooLarge { size: metadata.len(), cap });
    }
    // The size said is only a hint: the file may grow while it is read. One byte past
    // the cap tells a larger file without reading it whole.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge { size: bytes.len() as u64, cap });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_good_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("good");
        std::fs::write(&path, b"plugin bytes").unwrap();
        assert_eq!(read(&path, 12).unwrap(), b"plugin bytes");
        assert!(matches!(read(&path, 11), Err(ReadError::TooLarge { size: 12, cap: 11 })));
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&dir.path().join("missing"), 10).unwrap_err();
        assert!(matches!(&err, ReadError::Io(io) if io.kind() == std::io::ErrorKind::NotFound), "{err}");
    }

    #[test]
    fn a_fifo_nobody_writes_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let started = Instant::now();
        let err = read(&path, 10).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular(Kind::Fifo)), "{err}");
        assert_eq!(err.to_string(), "not a regular file (a FIFO)");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn dev_zero_is_refused_without_reading() {
        let err = read(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular(Kind::CharDevice)), "{err}");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path(), 10).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular(Kind::Directory)), "{err}");
    }

    #[test]
    fn a_sparse_file_past_the_cap_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        File::create(&path).unwrap().set_len(1 << 40).unwrap();
        let started = Instant::now();
        let err = read(&path, 1 << 20).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { size, cap } if size == 1 << 40 && cap == 1 << 20), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
