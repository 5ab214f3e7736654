//! A deterministic in-memory disk and clock for crash, fault and corruption tests.
//!
//! # Fault model
//!
//! The disk keeps two images of everything: the *live* image (what the running process sees,
//! i.e. the page cache and dentry cache) and the *durable* image (what is on the platter and
//! survives power loss). Every read uses the live image.
//!
//! **File data.** Each file (inode) has live bytes, durable bytes and the list of *pending* ops
//! (`write_all_at` as `{pos, data}`, `set_len` as `SetLen(len)`) issued since its last successful
//! `sync_data`, in issue order. Writes and `set_len` change only the live bytes and append to the
//! pending list. `sync_data` applies the pending ops to the durable bytes, so afterwards durable
//! equals live. Invariant: replaying `pending` onto `durable` always yields `live`.
//!
//! **Namespace.** Every directory has a live entry table and a durable entry table (name → file or
//! directory). `create_dir_all`, creating `open`, `remove_file`, `remove_dir_all` and `rename`
//! change only live tables. `sync_dir(d)` copies `d`'s live table over its durable table: every
//! add, remove and rename *within* `d` becomes durable at once; a rename across directories needs
//! `sync_dir` of both. One simplification: directories directly under the root (`/data`) are
//! durable as soon as they are created (and gone as soon as removed), so tests need not sync `/`;
//! files directly under the root still need `sync_dir("/")`. A file or directory survives a crash
//! only if it is reachable from the root through durable entries, so a durable entry inside a
//! directory whose own entry was never synced is lost with that directory, and a file that is
//! unlinked but still open is lost entirely (POSIX unlink semantics while running: the handle
//! keeps working).
//!
//! **Crash.** [`SimDisk::crash_at_op`] arms a crash at a mutating op; that op and every later one
//! fail with `"simulated crash"` and take no effect, and reads fail the same way.
//! [`SimDisk::crash_image`] then builds a fresh disk whose live and durable images are both what
//! survives: the reachable durable namespace, each surviving file's durable bytes, and
//! - [`Torn::None`]: nothing else;
//! - [`Torn::Prefix`]: for each surviving file, a seeded choice of `k` in `0..=pending.len()`;
//!   the first `k - 1` pending ops land fully and the `k`-th lands partially: a write lands only
//!   its first `m` bytes, `m` a multiple of 512 (counted from the write's own start, i.e. a
//!   sector-granular tear) or its full length; a `SetLen` lands whole.
//!
//! Unsynced namespace changes never survive a crash, in either mode (a real file system may
//! persist some early; this simulator does not model that). Pending ops land in issue order
//! (a real device may reorder them; the log only appends and syncs, so in-order prefixes are the
//! interesting case).
//!
//! **Injected faults.** A sync can be made to fail with `EIO` ([`SimDisk::fail_sync_at_op`],
//! [`SimDisk::fail_next_sync`]); it then makes nothing durable and leaves the pending ops in
//! place, so a later sync can still succeed (the log treats a failed sync as fatal, so it must
//! not rely on that either way). With [`SimDisk::set_capacity_bytes`], a write or `set_len` that
//! would take the total live size of all files (those linked in the live namespace, plus unlinked
//! ones still open) past the capacity fails with `ENOSPC` and changes nothing.
//! [`SimDisk::flip_bit`] models bit rot at rest by flipping a bit in both images.
//!
//! **Paths** are split with [`Path::components`]; the root and `.` components are ignored, so
//! `/data/x` and `data/x` name the same file, and `..` is rejected with `InvalidInput`.
//!
//! Everything is deterministic: ids are handed out in op order, and the only randomness is the
//! seed given to [`Torn::Prefix`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::mem;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Clock, File, Storage};

/// Id of the root directory. Files and directories share one id space, starting after it.
const ROOT: u64 = 0;
/// Granularity at which a torn write may stop.
const SECTOR: usize = 512;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// What, beyond synced state, survives [`SimDisk::crash_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Torn {
    /// Only what was synced survives.
    None,
    /// Per file, a seeded prefix of its unsynced ops also survives, the last one possibly torn at
    /// a sector boundary.
    Prefix {
        /// Seed for the choice of prefix; the same seed on the same disk gives the same image.
        seed: u64,
    },
}

/// An in-memory disk with a live and a durable image. See the module docs for the fault model.
///
/// Created with [`SimDisk::new`], which returns it already in an `Arc` because the files it hands
/// out share its state.
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

/// A directory entry: the id of a file (inode) or of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir(u64),
}

#[derive(Default)]
struct Dir {
    live: BTreeMap<OsString, Node>,
    durable: BTreeMap<OsString, Node>,
}

#[derive(Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Ops since the last successful sync, in issue order.
    pending: Vec<PendingOp>,
    /// Open handles; an unlinked inode lives while this is non-zero.
    handles: usize,
}

enum PendingOp {
    Write { pos: usize, data: Vec<u8> },
    SetLen(usize),
}

struct State {
    dirs: BTreeMap<u64, Dir>,
    inodes: BTreeMap<u64, Inode>,
    next_id: u64,
    /// Mutating ops run so far (successful or not), excluding those refused by a crash.
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    fail_sync_at: Option<u64>,
    fail_next_sync: bool,
    capacity: Option<u64>,
}

/// A handle to one inode of a [`SimDisk`].
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

/// A settable clock for tests.
#[derive(Debug)]
pub struct SimClock {
    ms: AtomicI64,
}

impl SimClock {
    /// A clock reading `start_ms`.
    #[must_use]
    pub fn new(start_ms: i64) -> Self {
        Self {
            ms: AtomicI64::new(start_ms),
        }
    }

    /// Sets the time to `ms`.
    pub fn set(&self, ms: i64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms` (backward if negative).
    pub fn advance(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

fn crash_error() -> io::Error {
    io::Error::other("simulated crash")
}

fn path_error(kind: io::ErrorKind, path: &Path) -> io::Error {
    io::Error::new(kind, format!("{kind}: {}", path.display()))
}

/// A panic under the lock (only test-programmer errors in the helpers) leaves the tables
/// structurally sound, at worst with that helper's change half done, so a poisoned lock is safe
/// to keep using; this keeps one failing assertion from cascading into every later call.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn components(path: &Path) -> io::Result<Vec<&OsStr>> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => names.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(path_error(io::ErrorKind::InvalidInput, path));
            }
        }
    }
    Ok(names)
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// `pwrite` semantics: extends with zeros if `pos` is past the end; writing nothing extends
/// nothing.
fn write_at(buf: &mut Vec<u8>, pos: usize, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let end = pos + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[pos..end].copy_from_slice(data);
}

impl PendingOp {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Write { pos, data } => write_at(buf, *pos, data),
            Self::SetLen(len) => buf.resize(*len, 0),
        }
    }
}

/// splitmix64: tiny, and good enough to pick crash states; written out so images are stable
/// across toolchains.
struct Rng(u64);

impl Rng {
    fn for_inode(seed: u64, ino: u64) -> Self {
        Self(seed ^ ino.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; the modulo bias is irrelevant here.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("a value below a usize fits one")
    }
}

impl Inode {
    fn at_rest(content: Vec<u8>) -> Self {
        Self {
            live: content.clone(),
            durable: content,
            pending: Vec::new(),
            handles: 0,
        }
    }

    /// The bytes that survive a crash of this inode.
    fn survivor(&self, ino: u64, torn: Torn) -> Vec<u8> {
        let mut content = self.durable.clone();
        let Torn::Prefix { seed } = torn else {
            return content;
        };
        if self.pending.is_empty() {
            return content;
        }
        let mut rng = Rng::for_inode(seed, ino);
        let k = rng.below(self.pending.len() + 1);
        if k == 0 {
            return content;
        }
        for op in &self.pending[..k - 1] {
            op.apply(&mut content);
        }
        match &self.pending[k - 1] {
            PendingOp::Write { pos, data } => {
                // Candidates are 0, 512, 1024, ... below the length, and the full length.
                let m = (rng.below(data.len().div_ceil(SECTOR) + 1) * SECTOR).min(data.len());
                write_at(&mut content, *pos, &data[..m]);
            }
            op @ PendingOp::SetLen(_) => op.apply(&mut content),
        }
        content
    }
}

impl State {
    fn new() -> Self {
        Self {
            dirs: BTreeMap::from([(ROOT, Dir::default())]),
            inodes: BTreeMap::new(),
            next_id: ROOT + 1,
            ops: 0,
            crash_at: None,
            crashed: false,
            fail_sync_at: None,
            fail_next_sync: false,
            capacity: None,
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn dir(&self, id: u64) -> &Dir {
        self.dirs.get(&id).expect("reachable directory exists")
    }

    fn dir_mut(&mut self, id: u64) -> &mut Dir {
        self.dirs.get_mut(&id).expect("reachable directory exists")
    }

    fn inode(&self, ino: u64) -> &Inode {
        self.inodes.get(&ino).expect("linked or open inode exists")
    }

    fn inode_mut(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("linked or open inode exists")
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(crash_error())
        } else {
            Ok(())
        }
    }

    /// Counts a mutating op, or refuses it (and all later ones) at the armed crash point.
    /// Returns the op's 1-based number.
    fn begin_op(&mut self) -> io::Result<u64> {
        self.check_alive()?;
        let op = self.ops + 1;
        if self.crash_at.is_some_and(|n| op >= n) {
            self.crashed = true;
            return Err(crash_error());
        }
        self.ops = op;
        Ok(op)
    }

    /// Fails with `ENOSPC` if growing a file from `old_len` to `new_len` would exceed capacity.
    fn reserve(&self, old_len: usize, new_len: usize) -> io::Result<()> {
        let (Some(capacity), Some(growth)) = (self.capacity, new_len.checked_sub(old_len)) else {
            return Ok(());
        };
        // Counts what the running system holds: an inode that is only durably linked (unlinked,
        // not yet synced, closed) has already given its blocks back.
        let linked = self.live_inodes();
        let used: u64 = self
            .inodes
            .iter()
            .filter(|(ino, inode)| inode.handles > 0 || linked.contains(*ino))
            .map(|(_, inode)| inode.live.len() as u64)
            .sum();
        if used.saturating_add(growth as u64) > capacity {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }

    /// Inodes reachable from the root through live entries.
    fn live_inodes(&self) -> BTreeSet<u64> {
        let mut inodes = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            for node in self.dir(id).live.values() {
                match *node {
                    Node::Dir(child) => stack.push(child),
                    Node::File(ino) => {
                        inodes.insert(ino);
                    }
                }
            }
        }
        inodes
    }

    /// Follows live entries from the root to the directory `names`.
    fn live_dir(&self, names: &[&OsStr], path: &Path) -> io::Result<u64> {
        let mut cur = ROOT;
        for name in names {
            cur = match self.dir(cur).live.get(*name) {
                Some(Node::Dir(id)) => *id,
                Some(Node::File(_)) => return Err(path_error(io::ErrorKind::NotADirectory, path)),
                None => return Err(path_error(io::ErrorKind::NotFound, path)),
            };
        }
        Ok(cur)
    }

    /// The live parent directory of `path` and its last name. Fails if the parent is missing.
    fn parent_of<'p>(&self, path: &'p Path) -> io::Result<(u64, &'p OsStr)> {
        let names = components(path)?;
        let Some((name, parents)) = names.split_last() else {
            return Err(path_error(io::ErrorKind::InvalidInput, path));
        };
        Ok((self.live_dir(parents, path)?, name))
    }

    /// What `path` names in the live namespace, if anything.
    fn lookup(&self, path: &Path) -> io::Result<Option<Node>> {
        let names = components(path)?;
        match names.split_last() {
            None => Ok(Some(Node::Dir(ROOT))),
            Some((name, parents)) => {
                let parent = self.live_dir(parents, path)?;
                Ok(self.dir(parent).live.get(*name).copied())
            }
        }
    }

    /// Applies the "top-level directories are always durable" rule after a namespace change.
    fn mirror_root_dirs(&mut self) {
        let Dir { live, durable } = self.dir_mut(ROOT);
        durable.retain(|_, node| matches!(node, Node::File(_)));
        durable.extend(
            live.iter()
                .filter(|(_, node)| matches!(node, Node::Dir(_)))
                .map(|(name, node)| (name.clone(), *node)),
        );
    }

    /// Drops directories and inodes that no live or durable entry reaches and no handle holds.
    /// Both tables are followed because an entry that is only durable can still come back in a
    /// crash image, and one that is only live can still be synced.
    fn gc(&mut self) {
        let mut dirs = BTreeSet::new();
        let mut files = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            if !dirs.insert(id) {
                continue;
            }
            let dir = self.dir(id);
            for node in dir.live.values().chain(dir.durable.values()) {
                match *node {
                    Node::Dir(child) => stack.push(child),
                    Node::File(ino) => {
                        files.insert(ino);
                    }
                }
            }
        }
        self.dirs.retain(|id, _| dirs.contains(id));
        self.inodes
            .retain(|ino, inode| inode.handles > 0 || files.contains(ino));
    }

    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        self.begin_op()?;
        let names = components(path)?;
        // Like the real call, directories made before a failure stay made.
        let result = self.make_dirs(&names, path);
        self.mirror_root_dirs();
        result
    }

    fn make_dirs(&mut self, names: &[&OsStr], path: &Path) -> io::Result<()> {
        let mut cur = ROOT;
        for (i, name) in names.iter().enumerate() {
            cur = match self.dir(cur).live.get(*name) {
                Some(Node::Dir(id)) => *id,
                Some(Node::File(_)) if i + 1 == names.len() => {
                    return Err(path_error(io::ErrorKind::AlreadyExists, path));
                }
                Some(Node::File(_)) => return Err(path_error(io::ErrorKind::NotADirectory, path)),
                None => {
                    let id = self.alloc_id();
                    self.dirs.insert(id, Dir::default());
                    self.dir_mut(cur)
                        .live
                        .insert(name.to_os_string(), Node::Dir(id));
                    id
                }
            };
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.check_alive()?;
        match self.lookup(path)? {
            Some(Node::Dir(id)) => Ok(self
                .dir(id)
                .live
                .keys()
                .map(|name| name.to_string_lossy().into_owned())
                .collect()),
            Some(Node::File(_)) => Err(path_error(io::ErrorKind::NotADirectory, path)),
            None => Err(path_error(io::ErrorKind::NotFound, path)),
        }
    }

    /// Opens (maybe creating) the file at `path` and registers a handle on its inode.
    fn open(&mut self, path: &Path, create: bool) -> io::Result<u64> {
        self.check_alive()?;
        let (parent, name) = self.parent_of(path)?;
        let ino = match self.dir(parent).live.get(name).copied() {
            Some(Node::File(ino)) => ino,
            Some(Node::Dir(_)) => return Err(path_error(io::ErrorKind::IsADirectory, path)),
            None if !create => return Err(path_error(io::ErrorKind::NotFound, path)),
            None => {
                // Only an open that creates mutates, so only it is a crash point.
                self.begin_op()?;
                let ino = self.alloc_id();
                self.inodes.insert(ino, Inode::default());
                self.dir_mut(parent)
                    .live
                    .insert(name.to_os_string(), Node::File(ino));
                ino
            }
        };
        self.inode_mut(ino).handles += 1;
        Ok(ino)
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        self.begin_op()?;
        let (parent, name) = self.parent_of(path)?;
        match self.dir(parent).live.get(name) {
            Some(Node::File(_)) => {}
            Some(Node::Dir(_)) => return Err(path_error(io::ErrorKind::IsADirectory, path)),
            None => return Err(path_error(io::ErrorKind::NotFound, path)),
        }
        self.dir_mut(parent).live.remove(name);
        self.gc();
        Ok(())
    }

    fn remove_dir_all(&mut self, path: &Path) -> io::Result<()> {
        self.begin_op()?;
        let (parent, name) = self.parent_of(path)?;
        let id = match self.dir(parent).live.get(name) {
            Some(Node::Dir(id)) => *id,
            Some(Node::File(_)) => return Err(path_error(io::ErrorKind::NotADirectory, path)),
            None => return Err(path_error(io::ErrorKind::NotFound, path)),
        };
        self.dir_mut(parent).live.remove(name);
        // The real call unlinks every child; their durable entries stay until the (now
        // unreachable) directories are synced, which can only happen via a crash image.
        let mut stack = vec![id];
        while let Some(dir) = stack.pop() {
            let entries = mem::take(&mut self.dir_mut(dir).live);
            stack.extend(entries.values().filter_map(|node| match node {
                Node::Dir(child) => Some(*child),
                Node::File(_) => None,
            }));
        }
        self.mirror_root_dirs();
        self.gc();
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.begin_op()?;
        let (from_parent, from_name) = self.parent_of(from)?;
        let node = self
            .dir(from_parent)
            .live
            .get(from_name)
            .copied()
            .ok_or_else(|| path_error(io::ErrorKind::NotFound, from))?;
        let (to_parent, to_name) = self.parent_of(to)?;
        if from_parent == to_parent && from_name == to_name {
            return Ok(());
        }
        match (node, self.dir(to_parent).live.get(to_name).copied()) {
            (_, None) | (Node::File(_), Some(Node::File(_))) => {}
            (Node::File(_), Some(Node::Dir(_))) => {
                return Err(path_error(io::ErrorKind::IsADirectory, to));
            }
            (Node::Dir(_), Some(Node::File(_))) => {
                return Err(path_error(io::ErrorKind::NotADirectory, to));
            }
            (Node::Dir(_), Some(Node::Dir(target))) => {
                if !self.dir(target).live.is_empty() {
                    return Err(path_error(io::ErrorKind::DirectoryNotEmpty, to));
                }
            }
        }
        if matches!(node, Node::Dir(_)) && components(to)?.starts_with(&components(from)?) {
            // Moving a directory into itself would detach it from the tree.
            return Err(path_error(io::ErrorKind::InvalidInput, to));
        }
        self.dir_mut(from_parent).live.remove(from_name);
        self.dir_mut(to_parent)
            .live
            .insert(to_name.to_os_string(), node);
        self.mirror_root_dirs();
        self.gc();
        Ok(())
    }

    fn sync_dir(&mut self, path: &Path) -> io::Result<()> {
        let op = self.begin_op()?;
        let id = match self.lookup(path)? {
            Some(Node::Dir(id)) => id,
            Some(Node::File(_)) => return Err(path_error(io::ErrorKind::NotADirectory, path)),
            None => return Err(path_error(io::ErrorKind::NotFound, path)),
        };
        if self.fail_sync_at == Some(op) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        let Dir { live, durable } = self.dir_mut(id);
        durable.clone_from(live);
        self.gc();
        Ok(())
    }

    fn sync_data(&mut self, ino: u64) -> io::Result<()> {
        let op = self.begin_op()?;
        let injected_next = mem::take(&mut self.fail_next_sync);
        if injected_next || self.fail_sync_at == Some(op) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        // Replaying the pending ops costs only the unsynced bytes, not the whole file.
        let Inode {
            durable, pending, ..
        } = self.inode_mut(ino);
        for op in pending.drain(..) {
            op.apply(durable);
        }
        Ok(())
    }

    fn write(&mut self, ino: u64, buf: &[u8], pos: u64) -> io::Result<()> {
        self.begin_op()?;
        let pos = to_usize(pos)?;
        let end = pos
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past usize::MAX"))?;
        if buf.is_empty() {
            return Ok(());
        }
        let len = self.inode(ino).live.len();
        self.reserve(len, end.max(len))?;
        self.push_op(
            ino,
            PendingOp::Write {
                pos,
                data: buf.to_vec(),
            },
        );
        Ok(())
    }

    fn set_len(&mut self, ino: u64, new_len: u64) -> io::Result<()> {
        self.begin_op()?;
        let new_len = to_usize(new_len)?;
        self.reserve(self.inode(ino).live.len(), new_len)?;
        self.push_op(ino, PendingOp::SetLen(new_len));
        Ok(())
    }

    fn push_op(&mut self, ino: u64, op: PendingOp) {
        let inode = self.inode_mut(ino);
        op.apply(&mut inode.live);
        inode.pending.push(op);
    }
}

impl SimDisk {
    /// An empty disk (just the root directory), with no faults armed.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Self::from_state(State::new())
    }

    fn from_state(state: State) -> Arc<Self> {
        Arc::new(Self {
            state: Arc::new(Mutex::new(state)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Mutating ops run so far: those that took effect or failed for a reason other than the
    /// simulated crash. After a crash armed at op `n`, this is `n - 1`.
    #[must_use]
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Arms a crash: mutating op number `n` (1-based, counted from the disk's creation) and every
    /// later one fail with `"simulated crash"` without effect, as do all reads from then on. If
    /// `n` is already past, the next mutating op crashes.
    pub fn crash_at_op(&self, n: u64) {
        self.lock().crash_at = Some(n);
    }

    /// Whether the armed crash has happened.
    #[must_use]
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Makes mutating op number `n` fail with `EIO` (raw OS error 5) if it is a `sync_data` or
    /// `sync_dir`, without making anything durable. Other ops, and later syncs, are unaffected.
    pub fn fail_sync_at_op(&self, n: u64) {
        self.lock().fail_sync_at = Some(n);
    }

    /// Makes the next `sync_data` (of any file) fail with `EIO` without making anything durable.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Caps the total live size of all files; `None` removes the cap. Growing past it fails with
    /// `ENOSPC` (raw OS error 28, kind `StorageFull`) and has no effect.
    pub fn set_capacity_bytes(&self, cap: Option<u64>) {
        self.lock().capacity = cap;
    }

    /// A new disk holding what would survive a crash right now (see the module docs). Its live
    /// and durable images are equal, no fault is armed and its op counter starts at zero. This
    /// disk is left untouched, so several images can be taken from one run.
    #[must_use]
    pub fn crash_image(&self, torn: Torn) -> Arc<Self> {
        let old = self.lock();
        let mut new = State::new();
        // Keeping ids makes images of images deterministic, and shared inodes stay shared.
        new.next_id = old.next_id;
        new.dirs.clear();
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            if new.dirs.contains_key(&id) {
                continue;
            }
            let entries = old.dir(id).durable.clone();
            for node in entries.values() {
                match *node {
                    Node::Dir(child) => stack.push(child),
                    Node::File(ino) => {
                        new.inodes
                            .entry(ino)
                            .or_insert_with(|| Inode::at_rest(old.inode(ino).survivor(ino, torn)));
                    }
                }
            }
            new.dirs.insert(
                id,
                Dir {
                    live: entries.clone(),
                    durable: entries,
                },
            );
        }
        Self::from_state(new)
    }

    /// The live content of the file at `path`, or `None` if there is no file there.
    /// Works on a crashed disk.
    #[must_use]
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        match state.lookup(path) {
            Ok(Some(Node::File(ino))) => Some(state.inode(ino).live.clone()),
            _ => None,
        }
    }

    /// Paths of all live files, sorted, each rooted at `/`.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        let state = self.lock();
        let mut files = Vec::new();
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        while let Some((id, path)) = stack.pop() {
            for (name, node) in &state.dir(id).live {
                match *node {
                    Node::Dir(child) => stack.push((child, path.join(name))),
                    Node::File(_) => files.push(path.join(name)),
                }
            }
        }
        files.sort();
        files
    }

    /// Flips bit `bit` (bit 0 is the least significant bit of byte 0) of the file at `path` in
    /// both the live and the durable image: bit rot at rest. If the file has unsynced ops, the
    /// flipped live byte is also recorded as one more unsynced write, so a later sync keeps it.
    ///
    /// # Panics
    /// If there is no file at `path` or `bit` is past its live end.
    pub fn flip_bit(&self, path: &Path, bit: u64) {
        let mut state = self.lock();
        let Ok(Some(Node::File(ino))) = state.lookup(path) else {
            panic!("flip_bit: no file at {}", path.display());
        };
        let inode = state.inode_mut(ino);
        let byte = usize::try_from(bit / 8)
            .ok()
            .filter(|&byte| byte < inode.live.len())
            .unwrap_or_else(|| {
                panic!(
                    "flip_bit: bit {bit} is past the end of {} ({} bytes)",
                    path.display(),
                    inode.live.len()
                )
            });
        let mask = 1u8 << (bit % 8);
        inode.live[byte] ^= mask;
        if let Some(at_rest) = inode.durable.get_mut(byte) {
            *at_rest ^= mask;
        }
        if !inode.pending.is_empty() {
            // Keeps "pending replayed onto durable == live" true whatever the pending ops are.
            let data = vec![inode.live[byte]];
            inode.pending.push(PendingOp::Write { pos: byte, data });
        }
    }

    /// Creates or overwrites the file at `path` with `data` as both its live and durable content,
    /// creating missing parent directories, and makes the entries on the way durable. Ignores the
    /// op counter, crash state and capacity.
    ///
    /// # Panics
    /// If `path` is the root, contains `..`, or runs into a file where a directory should be (or
    /// the reverse).
    pub fn write_raw(&self, path: &Path, data: &[u8]) {
        let mut state = self.lock();
        let names = components(path).expect("write_raw: unsupported path");
        let Some((name, parents)) = names.split_last() else {
            panic!("write_raw: {} is the root", path.display());
        };
        let mut cur = ROOT;
        for parent in parents {
            let id = match state.dir(cur).live.get(*parent).copied() {
                Some(Node::Dir(id)) => id,
                Some(Node::File(_)) => {
                    panic!("write_raw: a file is in the way of {}", path.display())
                }
                None => {
                    let id = state.alloc_id();
                    state.dirs.insert(id, Dir::default());
                    state
                        .dir_mut(cur)
                        .live
                        .insert(parent.to_os_string(), Node::Dir(id));
                    id
                }
            };
            state
                .dir_mut(cur)
                .durable
                .insert(parent.to_os_string(), Node::Dir(id));
            cur = id;
        }
        let ino = match state.dir(cur).live.get(*name).copied() {
            Some(Node::File(ino)) => ino,
            Some(Node::Dir(_)) => panic!("write_raw: {} is a directory", path.display()),
            None => {
                let ino = state.alloc_id();
                state.inodes.insert(ino, Inode::default());
                state
                    .dir_mut(cur)
                    .live
                    .insert(name.to_os_string(), Node::File(ino));
                ino
            }
        };
        state
            .dir_mut(cur)
            .durable
            .insert(name.to_os_string(), Node::File(ino));
        let inode = state.inode_mut(ino);
        inode.live = data.to_vec();
        inode.durable = data.to_vec();
        inode.pending.clear();
        state.gc();
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("ops", &state.ops)
            .field("crashed", &state.crashed)
            .field("inodes", &state.inodes.len())
            .field("dirs", &state.dirs.len())
            .finish_non_exhaustive()
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.lock().create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.lock().list_dir(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let ino = self.lock().open(path, create)?;
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            ino,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.lock().remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.lock().remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.lock().rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.lock().sync_dir(path)
    }

    /// Answers from the live namespace even after a crash: it cannot report an error, and
    /// nothing the caller does with the answer can take effect any more.
    fn exists(&self, path: &Path) -> bool {
        matches!(self.lock().lookup(path), Ok(Some(_)))
    }
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl File for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let state = lock(&self.state);
        state.check_alive()?;
        let live = &state.inode(self.ino).live;
        let Some(tail) = usize::try_from(pos).ok().and_then(|pos| live.get(pos..)) else {
            return Ok(0);
        };
        let n = buf.len().min(tail.len());
        buf[..n].copy_from_slice(&tail[..n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        lock(&self.state).write(self.ino, buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        lock(&self.state).sync_data(self.ino)
    }

    fn len(&self) -> io::Result<u64> {
        let state = lock(&self.state);
        state.check_alive()?;
        Ok(state.inode(self.ino).live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.state).set_len(self.ino, len)
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if let Some(inode) = state.inodes.get_mut(&self.ino) {
            inode.handles = inode.handles.saturating_sub(1);
        }
        // An unlinked file's bytes go away with its last handle, which frees capacity.
        state.gc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    /// A disk with `/d` durable and an empty durable file `/d/f` open for writing.
    fn disk_with_file() -> (Arc<SimDisk>, Arc<dyn File>) {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/d")).unwrap();
        let file = disk.open(p("/d/f"), true).unwrap();
        disk.sync_dir(p("/d")).unwrap();
        (disk, file)
    }

    fn is_crash(err: &io::Error) -> bool {
        err.kind() == io::ErrorKind::Other && err.to_string() == "simulated crash"
    }

    /// Every live path (directories with `None`) and file content.
    fn tree(disk: &SimDisk) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let state = disk.lock();
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        while let Some((id, path)) = stack.pop() {
            for (name, node) in &state.dir(id).live {
                match *node {
                    Node::Dir(child) => {
                        out.push((path.join(name), None));
                        stack.push((child, path.join(name)));
                    }
                    Node::File(ino) => {
                        out.push((path.join(name), Some(state.inode(ino).live.clone())));
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn check_invariant(disk: &SimDisk) {
        let state = disk.lock();
        for inode in state.inodes.values() {
            let mut replayed = inode.durable.clone();
            for op in &inode.pending {
                op.apply(&mut replayed);
            }
            assert_eq!(replayed, inode.live);
        }
    }

    #[test]
    fn synced_data_survives_and_unsynced_does_not() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"hello", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b" world", 5).unwrap();
        assert_eq!(disk.read_file(p("/d/f")).unwrap(), b"hello world");

        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/d/f")).unwrap(), b"hello");
        assert_eq!(image.files(), vec![PathBuf::from("/d/f")]);
        // The image is a normal disk at rest: a second crash changes nothing.
        let again = image.crash_image(Torn::Prefix { seed: 7 });
        assert_eq!(again.read_file(p("/d/f")).unwrap(), b"hello");
        // The original keeps running.
        assert_eq!(disk.read_file(p("/d/f")).unwrap(), b"hello world");
    }

    #[test]
    fn set_len_is_not_durable_until_sync() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"abcdef", 0).unwrap();
        file.sync_data().unwrap();
        file.set_len(2).unwrap();
        assert_eq!(file.len().unwrap(), 2);
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/d/f")).unwrap(), b"abcdef");
        file.sync_data().unwrap();
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/d/f")).unwrap(), b"ab");
    }

    #[test]
    fn created_file_vanishes_unless_dir_synced() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/data/t/0")).unwrap();
        let file = disk.open(p("/data/t/0/a.log"), true).unwrap();
        file.write_all_at(b"x", 0).unwrap();
        file.sync_data().unwrap();
        // The top-level directory is durable at once; nothing below it is.
        let image = disk.crash_image(Torn::None);
        assert!(image.exists(p("/data")));
        assert!(!image.exists(p("/data/t")));
        assert!(image.files().is_empty());

        // Syncing the file's own directory is not enough while its parents are not durable.
        disk.sync_dir(p("/data/t/0")).unwrap();
        assert!(disk.crash_image(Torn::None).files().is_empty());
        disk.sync_dir(p("/data/t")).unwrap();
        assert!(disk.crash_image(Torn::None).files().is_empty());
        disk.sync_dir(p("/data")).unwrap();
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/data/t/0/a.log")).unwrap(), b"x");
        let mut names = image.list_dir(p("/data/t")).unwrap();
        names.sort();
        assert_eq!(names, vec!["0"]);
    }

    #[test]
    fn files_in_root_need_sync_of_root() {
        let disk = SimDisk::new();
        disk.open(p("/f"), true).unwrap();
        assert!(disk.crash_image(Torn::None).files().is_empty());
        disk.sync_dir(p("/")).unwrap();
        assert_eq!(
            disk.crash_image(Torn::None).files(),
            vec![PathBuf::from("/f")]
        );
    }

    #[test]
    fn rename_is_not_durable_until_sync_dir() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"new", 0).unwrap();
        file.sync_data().unwrap();
        let old = disk.open(p("/d/target"), true).unwrap();
        old.write_all_at(b"old", 0).unwrap();
        old.sync_data().unwrap();
        disk.sync_dir(p("/d")).unwrap();

        disk.rename(p("/d/f"), p("/d/target")).unwrap();
        assert_eq!(disk.files(), vec![PathBuf::from("/d/target")]);
        assert_eq!(disk.read_file(p("/d/target")).unwrap(), b"new");
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/d/f")).unwrap(), b"new");
        assert_eq!(image.read_file(p("/d/target")).unwrap(), b"old");

        disk.sync_dir(p("/d")).unwrap();
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.files(), vec![PathBuf::from("/d/target")]);
        assert_eq!(image.read_file(p("/d/target")).unwrap(), b"new");
    }

    #[test]
    fn rename_across_dirs_needs_both_syncs() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"x", 0).unwrap();
        file.sync_data().unwrap();
        disk.create_dir_all(p("/e")).unwrap();
        disk.rename(p("/d/f"), p("/e/f")).unwrap();
        disk.sync_dir(p("/e")).unwrap();
        // Both entries are durable now; the inode is shared, like a hard link.
        let image = disk.crash_image(Torn::None);
        assert_eq!(
            image.files(),
            vec![PathBuf::from("/d/f"), PathBuf::from("/e/f")]
        );
        disk.sync_dir(p("/d")).unwrap();
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.files(), vec![PathBuf::from("/e/f")]);
        assert_eq!(image.read_file(p("/e/f")).unwrap(), b"x");
    }

    #[test]
    fn directory_rename_carries_its_durable_contents() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/data/p0")).unwrap();
        let file = disk.open(p("/data/p0/seg"), true).unwrap();
        file.write_all_at(b"records", 0).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(p("/data/p0")).unwrap();
        disk.sync_dir(p("/data")).unwrap();

        disk.rename(p("/data/p0"), p("/data/p0.deleted")).unwrap();
        assert_eq!(disk.files(), vec![PathBuf::from("/data/p0.deleted/seg")]);
        assert_eq!(
            disk.crash_image(Torn::None).files(),
            vec![PathBuf::from("/data/p0/seg")]
        );
        disk.sync_dir(p("/data")).unwrap();
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.files(), vec![PathBuf::from("/data/p0.deleted/seg")]);
        assert_eq!(
            image.read_file(p("/data/p0.deleted/seg")).unwrap(),
            b"records"
        );
        let err = disk
            .rename(p("/data/p0.deleted"), p("/data/p0.deleted/inner"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn remove_is_not_durable_until_sync_dir() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"x", 0).unwrap();
        file.sync_data().unwrap();
        drop(file);
        disk.remove_file(p("/d/f")).unwrap();
        assert!(!disk.exists(p("/d/f")));
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/d/f")).unwrap(), b"x");
        disk.sync_dir(p("/d")).unwrap();
        assert!(disk.crash_image(Torn::None).files().is_empty());
        assert!(disk.lock().inodes.is_empty(), "unreachable inode collected");
    }

    #[test]
    fn remove_dir_all_then_recreate_does_not_resurrect_children() {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/data/t")).unwrap();
        disk.open(p("/data/t/a"), true).unwrap();
        disk.sync_dir(p("/data/t")).unwrap();
        disk.sync_dir(p("/data")).unwrap();

        disk.remove_dir_all(p("/data/t")).unwrap();
        assert!(!disk.exists(p("/data/t")));
        // Not yet durable: the whole subtree comes back.
        assert_eq!(
            disk.crash_image(Torn::None).files(),
            vec![PathBuf::from("/data/t/a")]
        );
        disk.create_dir_all(p("/data/t")).unwrap();
        disk.sync_dir(p("/data")).unwrap();
        let image = disk.crash_image(Torn::None);
        assert!(image.exists(p("/data/t")));
        assert!(image.files().is_empty());
    }

    #[test]
    fn not_found_cases() {
        let disk = SimDisk::new();
        let kind = |r: io::Result<Arc<dyn File>>| r.unwrap_err().kind();
        assert_eq!(kind(disk.open(p("/d/f"), false)), io::ErrorKind::NotFound);
        assert_eq!(kind(disk.open(p("/d/f"), true)), io::ErrorKind::NotFound);
        assert_eq!(
            disk.list_dir(p("/d")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        disk.create_dir_all(p("/d")).unwrap();
        assert_eq!(kind(disk.open(p("/d/f"), false)), io::ErrorKind::NotFound);
        assert_eq!(kind(disk.open(p("/d"), true)), io::ErrorKind::IsADirectory);
        assert_eq!(
            disk.remove_file(p("/d/f")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(disk.list_dir(p("/d")).unwrap().is_empty());
        assert_eq!(disk.list_dir(p("/")).unwrap(), vec!["d"]);
        assert_eq!(
            disk.create_dir_all(p("/d/../e")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    /// Pending ops on `/d/f` for the torn-write test, replayed independently of the simulator.
    enum Op {
        Write(usize, Vec<u8>),
        SetLen(usize),
    }

    fn oracle_apply(state: &mut Vec<u8>, op: &Op, write_prefix: usize) {
        match op {
            Op::Write(pos, data) => {
                let data = &data[..write_prefix];
                if data.is_empty() {
                    return;
                }
                if state.len() < pos + data.len() {
                    state.resize(pos + data.len(), 0);
                }
                state[*pos..*pos + data.len()].copy_from_slice(data);
            }
            Op::SetLen(len) => state.resize(*len, 0),
        }
    }

    #[test]
    fn torn_prefix_yields_only_sector_granular_prefixes() {
        let (disk, file) = disk_with_file();
        let base = vec![0xAA; 700];
        file.write_all_at(&base, 0).unwrap();
        file.sync_data().unwrap();
        let other = disk.open(p("/d/synced"), true).unwrap();
        other.write_all_at(b"at rest", 0).unwrap();
        other.sync_data().unwrap();
        disk.sync_dir(p("/d")).unwrap();

        let ops = [
            Op::Write(700, vec![1; 1300]),
            Op::SetLen(1500),
            Op::Write(1000, vec![2; 1024]),
            Op::Write(3000, vec![3; 100]),
            Op::Write(0, vec![4; 10]),
        ];
        for op in &ops {
            match op {
                Op::Write(pos, data) => file.write_all_at(data, *pos as u64).unwrap(),
                Op::SetLen(len) => file.set_len(*len as u64).unwrap(),
            }
        }

        let mut allowed = BTreeSet::new();
        for k in 0..=ops.len() {
            let mut state = base.clone();
            if k == 0 {
                allowed.insert(state);
                continue;
            }
            for op in &ops[..k - 1] {
                oracle_apply(&mut state, op, op_len(op));
            }
            let last = &ops[k - 1];
            let len = op_len(last);
            let mut prefixes: Vec<usize> = (0..=len).step_by(SECTOR).collect();
            prefixes.push(len);
            for m in prefixes {
                let mut torn = state.clone();
                oracle_apply(&mut torn, last, m);
                allowed.insert(torn);
            }
        }

        let mut seen = BTreeSet::new();
        for seed in 0..500 {
            let image = disk.crash_image(Torn::Prefix { seed });
            let content = image.read_file(p("/d/f")).unwrap();
            assert!(allowed.contains(&content), "seed {seed}: disallowed image");
            assert_eq!(image.read_file(p("/d/synced")).unwrap(), b"at rest");
            let again = disk.crash_image(Torn::Prefix { seed });
            assert_eq!(
                again.read_file(p("/d/f")).unwrap(),
                content,
                "deterministic"
            );
            seen.insert(content);
        }
        assert_eq!(seen, allowed, "every allowed state is reachable");
    }

    fn op_len(op: &Op) -> usize {
        match op {
            Op::Write(_, data) => data.len(),
            Op::SetLen(_) => 0,
        }
    }

    /// One mutating op per step.
    fn step(disk: &SimDisk, i: usize) -> io::Result<()> {
        let open = |path: &str| disk.open(p(path), false);
        match i {
            1 => disk.create_dir_all(p("/d/sub")),
            2 => disk.open(p("/d/a"), true).map(drop),
            3 => open("/d/a")?.write_all_at(b"hello", 0),
            4 => open("/d/a")?.sync_data(),
            5 => disk.sync_dir(p("/d")),
            6 => open("/d/a")?.set_len(2),
            7 => disk.open(p("/d/sub/b"), true).map(drop),
            8 => open("/d/sub/b")?.write_all_at(b"bee", 3),
            9 => disk.rename(p("/d/sub/b"), p("/d/c")),
            10 => disk.sync_dir(p("/d/sub")),
            11 => disk.remove_file(p("/d/a")),
            12 => disk.sync_dir(p("/d")),
            13 => disk.remove_dir_all(p("/d/sub")),
            _ => unreachable!(),
        }
    }
    const STEPS: usize = 13;

    #[test]
    fn crash_at_op_stops_effects_exactly_at_op_n() {
        let reference = SimDisk::new();
        let mut live = vec![tree(&reference)];
        let mut durable = vec![tree(&reference.crash_image(Torn::None))];
        for i in 1..=STEPS {
            step(&reference, i).unwrap();
            assert_eq!(reference.ops(), i as u64);
            live.push(tree(&reference));
            durable.push(tree(&reference.crash_image(Torn::None)));
        }

        for n in 1..=STEPS {
            let disk = SimDisk::new();
            disk.crash_at_op(n as u64);
            for i in 1..n {
                step(&disk, i).unwrap();
            }
            assert!(!disk.is_crashed());
            let err = step(&disk, n).unwrap_err();
            assert!(is_crash(&err), "op {n}: {err}");
            assert!(disk.is_crashed());
            assert_eq!(disk.ops(), n as u64 - 1);
            for later in n..=STEPS {
                assert!(is_crash(&step(&disk, later).unwrap_err()));
            }
            assert_eq!(tree(&disk), live[n - 1], "live state after crash at {n}");
            assert_eq!(
                tree(&disk.crash_image(Torn::None)),
                durable[n - 1],
                "durable state after crash at {n}"
            );
            assert!(is_crash(&disk.list_dir(p("/")).unwrap_err()));
            assert!(is_crash(&disk.open(p("/d/a"), false).unwrap_err()));
            let image = disk.crash_image(Torn::Prefix { seed: n as u64 });
            assert!(!image.is_crashed());
            assert_eq!(image.ops(), 0);
            image.create_dir_all(p("/after")).unwrap();
        }
    }

    #[test]
    fn reads_through_open_handle_fail_after_crash() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"abc", 0).unwrap();
        disk.crash_at_op(disk.ops() + 1);
        assert!(is_crash(&file.sync_data().unwrap_err()));
        let mut buf = [0; 3];
        assert!(is_crash(&file.read_at(&mut buf, 0).unwrap_err()));
        assert!(is_crash(&file.len().unwrap_err()));
        assert!(
            disk.crash_image(Torn::None)
                .read_file(p("/d/f"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn failed_sync_makes_nothing_durable_and_later_syncs_do() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"data", 0).unwrap();
        disk.fail_sync_at_op(disk.ops() + 1);
        let err = file.sync_data().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert!(
            disk.crash_image(Torn::None)
                .read_file(p("/d/f"))
                .unwrap()
                .is_empty()
        );
        file.sync_data().unwrap();
        assert_eq!(
            disk.crash_image(Torn::None).read_file(p("/d/f")).unwrap(),
            b"data"
        );

        disk.open(p("/d/g"), true).unwrap();
        disk.fail_sync_at_op(disk.ops() + 1);
        let err = disk.sync_dir(p("/d")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert!(!disk.crash_image(Torn::None).exists(p("/d/g")));
        disk.sync_dir(p("/d")).unwrap();
        assert!(disk.crash_image(Torn::None).exists(p("/d/g")));

        // A non-sync op at the armed number is unaffected.
        disk.fail_sync_at_op(disk.ops() + 1);
        file.write_all_at(b"!", 4).unwrap();
        file.sync_data().unwrap();

        disk.fail_next_sync();
        file.write_all_at(b"?", 5).unwrap();
        assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        assert_eq!(
            disk.crash_image(Torn::None).read_file(p("/d/f")).unwrap(),
            b"data!"
        );
        file.sync_data().unwrap();
        assert_eq!(
            disk.crash_image(Torn::None).read_file(p("/d/f")).unwrap(),
            b"data!?"
        );
    }

    #[test]
    fn enospc_has_no_partial_effect() {
        let (disk, file) = disk_with_file();
        disk.set_capacity_bytes(Some(100));
        file.write_all_at(&[1; 60], 0).unwrap();
        let err = file.write_all_at(&[2; 50], 60).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(disk.read_file(p("/d/f")).unwrap(), vec![1; 60]);
        assert_eq!(
            file.set_len(101).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        for seed in 0..50 {
            let image = disk.crash_image(Torn::Prefix { seed });
            let content = image.read_file(p("/d/f")).unwrap();
            assert!(content.is_empty() || content == vec![1; 60]);
        }
        // Overwrites and exact fits are fine.
        file.write_all_at(&[3; 40], 60).unwrap();
        file.write_all_at(&[4; 100], 0).unwrap();
        // Space held by an unlinked file is freed with its last handle.
        let g = disk.open(p("/d/g"), true).unwrap();
        assert_eq!(
            g.write_all_at(b"x", 0).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        disk.remove_file(p("/d/f")).unwrap();
        assert_eq!(
            g.write_all_at(b"x", 0).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        drop(file);
        g.write_all_at(b"x", 0).unwrap();
        disk.set_capacity_bytes(None);
        g.write_all_at(&[0; 1000], 1).unwrap();
    }

    #[test]
    fn handles_stay_valid_after_unlink_and_rename() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"abc", 0).unwrap();
        disk.rename(p("/d/f"), p("/d/g")).unwrap();
        file.write_all_at(b"d", 3).unwrap();
        assert_eq!(disk.read_file(p("/d/g")).unwrap(), b"abcd");
        disk.remove_file(p("/d/g")).unwrap();
        assert!(disk.files().is_empty());
        assert_eq!(
            disk.open(p("/d/g"), false).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        file.write_all_at(b"e", 4).unwrap();
        file.sync_data().unwrap();
        let mut buf = [0; 5];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abcde");
        assert_eq!(file.len().unwrap(), 5);
        // A new file at the old name is a different inode.
        let fresh = disk.open(p("/d/g"), true).unwrap();
        assert_eq!(fresh.len().unwrap(), 0);
        disk.sync_dir(p("/d")).unwrap();
        assert!(
            disk.crash_image(Torn::None)
                .read_file(p("/d/g"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(file.read_at(&mut buf, 5).unwrap(), 0);
    }

    #[test]
    fn flip_bit_changes_exactly_one_bit() {
        let (disk, file) = disk_with_file();
        let original = vec![0x5A; 64];
        file.write_all_at(&original, 0).unwrap();
        file.sync_data().unwrap();
        disk.flip_bit(p("/d/f"), 8 * 10 + 3);
        let diff = |content: &[u8]| -> u32 {
            content
                .iter()
                .zip(&original)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum()
        };
        let live = disk.read_file(p("/d/f")).unwrap();
        assert_eq!(diff(&live), 1);
        assert_eq!(live[10], 0x5A ^ 0b1000);
        let durable = disk.crash_image(Torn::None).read_file(p("/d/f")).unwrap();
        assert_eq!(durable, live);

        // With unsynced ops the flip survives a later sync too.
        file.set_len(8).unwrap();
        file.set_len(64).unwrap();
        disk.flip_bit(p("/d/f"), 0);
        check_invariant(&disk);
        file.sync_data().unwrap();
        check_invariant(&disk);
        let durable = disk.crash_image(Torn::None).read_file(p("/d/f")).unwrap();
        assert_eq!(durable[0], 0x5B);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn flip_bit_out_of_range_panics() {
        let (disk, file) = disk_with_file();
        file.write_all_at(b"a", 0).unwrap();
        disk.flip_bit(p("/d/f"), 8);
    }

    #[test]
    fn write_raw_is_durable_immediately() {
        let disk = SimDisk::new();
        disk.write_raw(p("/data/t/0/x.log"), b"raw");
        let image = disk.crash_image(Torn::None);
        assert_eq!(image.read_file(p("/data/t/0/x.log")).unwrap(), b"raw");
        assert_eq!(disk.ops(), 0);
        let file = disk.open(p("/data/t/0/x.log"), false).unwrap();
        disk.write_raw(p("/data/t/0/x.log"), b"other");
        assert_eq!(file.len().unwrap(), 5);
    }

    #[test]
    fn random_workloads_keep_the_replay_invariant() {
        for seed in 0..20 {
            let mut rng = Rng(seed);
            let disk = SimDisk::new();
            disk.create_dir_all(p("/d")).unwrap();
            let mut handles: Vec<Arc<dyn File>> = Vec::new();
            for _ in 0..200 {
                let name = format!("/d/{}", rng.below(4));
                match rng.below(8) {
                    0 => handles.push(disk.open(p(&name), true).unwrap()),
                    1 => {
                        let _ = disk.remove_file(p(&name));
                    }
                    2 => disk.sync_dir(p("/d")).unwrap(),
                    3 => {
                        let _ = disk.rename(p(&name), p(&format!("/d/{}", rng.below(4))));
                    }
                    _ if handles.is_empty() => {}
                    4 => {
                        let h = rng.below(handles.len());
                        handles[h].set_len(rng.below(3000) as u64).unwrap();
                    }
                    5 => {
                        let h = rng.below(handles.len());
                        handles[h].sync_data().unwrap();
                    }
                    _ => {
                        let h = rng.below(handles.len());
                        let data = vec![rng.below(256) as u8; rng.below(1500)];
                        handles[h]
                            .write_all_at(&data, rng.below(2000) as u64)
                            .unwrap();
                    }
                }
                check_invariant(&disk);
            }
            let image = disk.crash_image(Torn::Prefix { seed });
            check_invariant(&image);
            drop(handles);
            let state = disk.lock();
            assert!(state.inodes.values().all(|i| i.handles == 0));
        }
    }

    #[test]
    fn sim_clock() {
        let clock = SimClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(500);
        assert_eq!(clock.now_ms(), 1_500);
        clock.set(42);
        assert_eq!(clock.now_ms(), 42);
    }
}
