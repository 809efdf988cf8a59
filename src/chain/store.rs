//! The best chain on disk, so a restart does not download and verify 900k headers again.
//!
//! Two files per network in the data directory:
//! - `headers-<net>.dat`: the best chain's 80-byte headers from genesis, back to back;
//! - `headers-<net>.tip`: a one-line sidecar `<net> <height> <hash>` naming the newest header
//!   that was verified and fully written (synced) before the sidecar was replaced.
//!
//! Loading trusts the headers up to the sidecar's height once that header's hash matches (one
//! hash, no re-verification); headers after it, left by a crash between writing data and
//! replacing the sidecar, are handed back to be verified again. A partial trailing record is
//! cut off. Writes go: sidecar down to the last unchanged header (only when truncating), then
//! truncate, append, sync, then the new sidecar via write-to-temp and rename. A crash at any
//! point leaves a sidecar that points at a header whose bytes are on disk and unchanged, so
//! earlier headers are never lost or trusted wrongly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::BlockHash;

use super::params::ChainParams;

/// Size of one serialized header.
const HEADER_SIZE: u64 = 80;

/// Failure opening a header store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the files failed.
    #[error("header store i/o: {0}")]
    Io(#[from] io::Error),
    /// The file's first header is not this network's genesis.
    #[error("{0} holds headers of another chain (genesis differs)")]
    WrongChain(PathBuf),
}

/// What [`HeaderStore::open`] found on disk.
#[derive(Debug)]
pub struct Loaded {
    /// Every whole header in the file, genesis first.
    pub headers: Vec<Header>,
    /// How many of them (from genesis) the sidecar vouches for; at least 1.
    pub trusted: u32,
}

/// The on-disk copy of the best chain.
#[derive(Debug)]
pub struct HeaderStore {
    file: File,
    path: PathBuf,
    tip_path: PathBuf,
    network: &'static str,
    /// Headers known to be written and synced.
    durable: u32,
}

impl HeaderStore {
    /// Open (creating if needed) the store for `params`' network in `dir`.
    pub fn open(dir: &Path, params: &ChainParams) -> Result<(HeaderStore, Loaded), StoreError> {
        fs::create_dir_all(dir)?;
        let network = params.network().to_core_arg();
        let path = dir.join(format!("headers-{network}.dat"));
        let tip_path = dir.join(format!("headers-{network}.tip"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let bytes = file.metadata()?.len();
        let whole = bytes / HEADER_SIZE;
        if bytes % HEADER_SIZE != 0 {
            tracing::warn!(path = %path.display(), "cutting a partial header off the store");
            file.set_len(whole * HEADER_SIZE)?;
            file.sync_data()?;
        }
        let mut headers = Vec::with_capacity(usize::try_from(whole).unwrap_or(0));
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        reader.seek(SeekFrom::Start(0))?;
        let mut record = [0u8; HEADER_SIZE as usize];
        for _ in 0..whole {
            reader.read_exact(&mut record)?;
            let header = deserialize::<Header>(&record)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            headers.push(header);
        }
        drop(reader);
        let mut store = HeaderStore {
            file,
            path,
            tip_path,
            network,
            durable: headers.len() as u32,
        };
        if headers.is_empty() {
            headers.push(params.genesis);
            store.persist(&headers, 0, params.genesis.block_hash())?;
        } else if headers[0] != params.genesis {
            return Err(StoreError::WrongChain(store.path));
        }
        let trusted = match store.read_tip() {
            Some((height, hash))
                if (height as usize) < headers.len()
                    && headers[height as usize].block_hash() == hash =>
            {
                height + 1
            }
            _ => 1,
        };
        Ok((store, Loaded { headers, trusted }))
    }

    /// Headers known to be on disk.
    pub fn len(&self) -> u32 {
        self.durable
    }

    /// Whether the store holds nothing (never true once opened: genesis is always written).
    pub fn is_empty(&self) -> bool {
        self.durable == 0
    }

    /// Cut the file down to `len` headers, the last of which has hash `last_hash`.
    pub fn truncate(&mut self, len: u32, last_hash: BlockHash) -> io::Result<()> {
        let len = len.max(1);
        self.write_tip(len - 1, &last_hash)?;
        self.durable = self.durable.min(len);
        self.file.set_len(u64::from(len) * HEADER_SIZE)?;
        self.file.sync_data()
    }

    /// Make the file equal to `headers` (the whole best chain, whose tip hash is `tip_hash`),
    /// knowing that nothing below `changed_from` changed since the last successful write.
    pub fn persist(
        &mut self,
        headers: &[Header],
        changed_from: u32,
        tip_hash: BlockHash,
    ) -> io::Result<()> {
        let total = headers.len() as u32;
        if total == 0 {
            return Ok(());
        }
        let start = changed_from.min(self.durable).min(total);
        if start < self.durable {
            // Point the sidecar below the part about to be rewritten first.
            let anchor = start.max(1) - 1;
            self.write_tip(anchor, &headers[anchor as usize].block_hash())?;
        }
        self.durable = self.durable.min(start);
        let mut buf = Vec::with_capacity((headers.len() - start as usize) * HEADER_SIZE as usize);
        for header in &headers[start as usize..] {
            buf.extend_from_slice(&serialize(header));
        }
        self.file.set_len(u64::from(start) * HEADER_SIZE)?;
        self.file
            .seek(SeekFrom::Start(u64::from(start) * HEADER_SIZE))?;
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.durable = total;
        self.write_tip(total - 1, &tip_hash)
    }

    fn read_tip(&self) -> Option<(u32, BlockHash)> {
        let text = fs::read_to_string(&self.tip_path).ok()?;
        let mut words = text.split_whitespace();
        if words.next()? != self.network {
            return None;
        }
        let height = words.next()?.parse().ok()?;
        let hash = BlockHash::from_str(words.next()?).ok()?;
        Some((height, hash))
    }

    fn write_tip(&self, height: u32, hash: &BlockHash) -> io::Result<()> {
        let tmp = self.tip_path.with_extension("tip.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        writeln!(f, "{} {} {}", self.network, height, hash)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.tip_path)
    }
}
