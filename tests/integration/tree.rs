//! Compares two directory trees entry by entry: type, mode, owner, size, contents,
//! modification time, link target, and which names share an inode.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the comparison records of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: Option<(i64, i64)>,
    link_target: Option<PathBuf>,
    /// The first path (in sorted order) of this entry's inode, for hard-link identity.
    inode_group: Option<PathBuf>,
}

/// The entries of a tree by relative path.
pub struct Tree {
    root: PathBuf,
    entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    pub fn read(root: &Path) -> Self {
        let mut paths = Vec::new();
        collect(root, Path::new(""), &mut paths);
        paths.sort();

        let mut first_of_inode: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut entries = BTreeMap::new();
        for relative in paths {
            let full = root.join(&relative);
            let meta = fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
            let file_type = meta.file_type();
            let kind = kind_of(&file_type);

            let inode_group = (file_type.is_file() && meta.nlink() > 1).then(|| {
                first_of_inode.entry((meta.dev(), meta.ino())).or_insert_with(|| relative.clone()).clone()
            });
            let link_target = file_type.is_symlink().then(|| fs::read_link(&full).unwrap());
            // Directory times change as the copy fills them in on some systems, so only
            // files and links are compared by time.
            let mtime = (!file_type.is_dir()).then(|| (meta.mtime(), meta.mtime_nsec()));

            entries.insert(
                relative,
                Entry {
                    kind,
                    mode: meta.mode(),
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: if file_type.is_dir() { 0 } else { meta.size() },
                    mtime,
                    link_target,
                    inode_group,
                },
            );
        }
        Self { root: root.to_owned(), entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, relative: &str) -> bool {
        self.entries.contains_key(Path::new(relative))
    }

    /// Lists every difference between `self` (expected) and `other` (actual); empty when equal.
    pub fn differences(&self, other: &Tree) -> Vec<String> {
        let mut differences = Vec::new();
        for (path, expected) in &self.entries {
            match other.entries.get(path) {
                None => differences.push(format!("missing: {}", path.display())),
                Some(actual) if actual != expected => {
                    differences.push(format!("differs: {}\n  expected {expected:?}\n  actual   {actual:?}", path.display()))
                }
                Some(_) if expected.kind == "file" && !same_contents(&self.root.join(path), &other.root.join(path)) => {
                    differences.push(format!("contents differ: {}", path.display()))
                }
                Some(_) => {}
            }
        }
        for path in other.entries.keys() {
            if !self.entries.contains_key(path) {
                differences.push(format!("unexpected: {}", path.display()));
            }
        }
        differences
    }
}

fn collect(root: &Path, relative: &Path, paths: &mut Vec<PathBuf>) {
    let dir = root.join(relative);
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let child = relative.join(entry.file_name());
        let is_dir = entry.file_type().unwrap().is_dir();
        paths.push(child.clone());
        if is_dir {
            collect(root, &child, paths);
        }
    }
}

fn kind_of(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;

    if file_type.is_dir() {
        "dir"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_file() {
        "file"
    } else {
        "other"
    }
}

fn same_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;

    let (Ok(mut a), Ok(mut b)) = (fs::File::open(a), fs::File::open(b)) else {
        return false;
    };
    let mut buf_a = vec![0u8; 1 << 20];
    let mut buf_b = vec![0u8; 1 << 20];
    loop {
        let read_a = read_full(&mut a, &mut buf_a);
        let read_b = read_full(&mut b, &mut buf_b);
        if read_a != read_b || buf_a[..read_a] != buf_b[..read_b] {
            return false;
        }
        if read_a == 0 {
            return true;
        }
    }

    fn read_full(file: &mut fs::File, buf: &mut [u8]) -> usize {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).unwrap() {
                0 => break,
                n => filled += n,
            }
        }
        filled
    }
}

#[test]
fn tree_comparison_detects_each_kind_of_change() {
    use std::os::unix::fs::{PermissionsExt, symlink};

    let expected_dir = tempfile::tempdir().unwrap();
    let root = expected_dir.path().join("root");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/a"), "same").unwrap();
    fs::hard_link(root.join("d/a"), root.join("d/a-link")).unwrap();
    fs::write(root.join("b"), "bbbb").unwrap();
    symlink("d/a", root.join("s")).unwrap();
    let expected = Tree::read(&root);

    type Change = fn(&Path);
    let changes: [(&str, Change); 6] = [
        ("nothing", |_| {}),
        ("mode", |root| fs::set_permissions(root.join("b"), fs::Permissions::from_mode(0o600)).unwrap()),
        ("contents", |root| {
            // Same size and time, other bytes: only the content check can see it.
            let modified = fs::metadata(root.join("b")).unwrap().modified().unwrap();
            fs::write(root.join("b"), "cccc").unwrap();
            fs::File::options().write(true).open(root.join("b")).unwrap().set_modified(modified).unwrap();
        }),
        ("hard link", |root| {
            fs::remove_file(root.join("d/a-link")).unwrap();
            crate::support::run_ok("cp", &["-a", &root.join("d/a").to_string_lossy(), &root.join("d/a-link").to_string_lossy()]);
        }),
        ("link target", |root| {
            fs::remove_file(root.join("s")).unwrap();
            symlink("b", root.join("s")).unwrap();
        }),
        ("extra file", |root| fs::write(root.join("new"), "").unwrap()),
    ];
    for (what, change) in changes {
        let actual_dir = tempfile::tempdir().unwrap();
        let copy = actual_dir.path().join("root");
        crate::support::run_ok("cp", &["-a", &root.to_string_lossy(), &copy.to_string_lossy()]);
        change(&copy);

        let differences = expected.differences(&Tree::read(&copy));

        if what == "nothing" {
            assert!(differences.is_empty(), "an exact copy differs: {differences:?}");
        } else {
            assert!(!differences.is_empty(), "a change of {what} went unnoticed");
        }
    }
}
