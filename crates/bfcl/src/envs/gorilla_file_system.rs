//! `GorillaFileSystem`: an in-memory file tree with shell-like commands (`ls`, `cd`,
//! `mv`, `cp`, `grep`, ...).
//!
//! Upstream's files and directories are Python objects that can end up shared: `cp` of a
//! directory gives the copy a shallow copy of the source's contents (the same `File` and
//! `Directory` objects), `mv` of a directory hands its contents dict to a new directory
//! while the children keep pointing at the old one as their parent. Those aliases are
//! observable (writing a file through the copy changes the original; `cd ..` from a child
//! of a moved directory lands in its old location), so the tree here is an arena of nodes
//! and of contents dicts addressed by index, with the same sharing.

use indexmap::IndexMap;

use crate::call::Call;
use crate::dict;
use crate::env::{Default, Environment, LongContext, Param, bind, opt, req};
use crate::value::{Dict, Key, Value};

const CLASS: &str = "GorillaFileSystem";

const FUNCTIONS: &[&str] = &[
    "pwd", "ls", "cd", "mkdir", "touch", "echo", "cat", "find", "wc", "sort", "grep", "du", "tail", "diff", "mv", "rm",
    "rmdir", "cp",
];

/// Characters a name given to `mkdir`, `touch`, `echo` or `cat` may not contain.
const INVALID_NAME_CHARS: &str = "|/\\?%*:\"><";

/// Python's recursion limit, as a bound on walks through a tree that `cp` made cyclic.
const MAX_DEPTH: usize = 990;

/// A fresh `GorillaFileSystem`.
pub fn new() -> Option<Box<dyn Environment>> {
    Some(Box::new(GorillaFileSystem::default()))
}

/// A node of the arena: upstream's `File` or `Directory` object.
#[derive(Debug, Clone)]
enum Node {
    File {
        name: String,
        content: String,
    },
    /// `contents` indexes [`GorillaFileSystem::dicts`]; several directories may share one.
    Dir {
        name: String,
        parent: Option<usize>,
        contents: usize,
    },
}

/// The file system. `nodes` and `dicts` only grow; what is no longer reachable from
/// `root` (or from the current directory's parent chain) is simply never visited.
#[derive(Debug, Clone)]
pub struct GorillaFileSystem {
    nodes: Vec<Node>,
    /// Contents dicts: item name to node index, in insertion order.
    dicts: Vec<IndexMap<String, usize>>,
    root: usize,
    cwd: usize,
    long_context: bool,
}

impl std::default::Default for GorillaFileSystem {
    fn default() -> Self {
        let mut fs = GorillaFileSystem { nodes: Vec::new(), dicts: Vec::new(), root: 0, cwd: 0, long_context: false };
        fs.root = fs.new_dir("/", None);
        fs.cwd = fs.root;
        fs
    }
}

fn error(msg: String) -> Value {
    Value::Dict(dict! { "error" => msg })
}

/// `str.splitlines()`: Python's line boundaries, `\r\n` as one, no trailing empty line.
fn splitlines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '\n' | '\r' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            out.push(&s[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' && chars.peek().is_some_and(|&(_, n)| n == '\n') {
                chars.next();
                end += 1;
            }
            start = end;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// `str.isspace()` for one character.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `len(str.split())`.
fn word_count(s: &str) -> usize {
    s.split(is_py_space).filter(|w| !w.is_empty()).count()
}

impl GorillaFileSystem {
    fn new_dir(&mut self, name: &str, parent: Option<usize>) -> usize {
        self.dicts.push(IndexMap::new());
        self.nodes.push(Node::Dir { name: name.to_owned(), parent, contents: self.dicts.len() - 1 });
        self.nodes.len() - 1
    }

    fn new_file(&mut self, name: &str, content: &str) -> usize {
        self.nodes.push(Node::File { name: name.to_owned(), content: content.to_owned() });
        self.nodes.len() - 1
    }

    fn name(&self, node: usize) -> &str {
        match &self.nodes[node] {
            Node::File { name, .. } | Node::Dir { name, .. } => name,
        }
    }

    fn is_dir(&self, node: usize) -> bool {
        matches!(self.nodes[node], Node::Dir { .. })
    }

    /// The file's content, `None` for a directory.
    fn file_content(&self, node: usize) -> Option<&str> {
        match &self.nodes[node] {
            Node::File { content, .. } => Some(content),
            Node::Dir { .. } => None,
        }
    }

    fn dict_of(&self, dir: usize) -> usize {
        match self.nodes[dir] {
            Node::Dir { contents, .. } => contents,
            Node::File { .. } => unreachable!("only directories have contents"),
        }
    }

    fn contents(&self, dir: usize) -> &IndexMap<String, usize> {
        &self.dicts[self.dict_of(dir)]
    }

    fn contents_mut(&mut self, dir: usize) -> &mut IndexMap<String, usize> {
        let d = self.dict_of(dir);
        &mut self.dicts[d]
    }

    fn parent(&self, dir: usize) -> Option<usize> {
        match self.nodes[dir] {
            Node::Dir { parent, .. } => parent,
            Node::File { .. } => None,
        }
    }

    /// `name in current_dir.contents`.
    fn in_cwd(&self, name: &str) -> bool {
        self.contents(self.cwd).contains_key(name)
    }

    /// `Directory._get_item`: `.` is the directory itself, else the named item.
    fn get_item(&self, dir: usize, name: &str) -> Option<usize> {
        if name == "." { Some(dir) } else { self.contents(dir).get(name).copied() }
    }

    /// The current directory's file of that name, if it is a file.
    fn cwd_file(&self, name: &str) -> Option<&str> {
        if !self.in_cwd(name) {
            return None;
        }
        self.get_item(self.cwd, name).and_then(|n| self.file_content(n))
    }

    /// `Directory._add_file`, with its `ValueError` when the name is taken.
    fn add_file(&mut self, dir: usize, name: &str, content: &str) -> Result<usize, String> {
        if self.contents(dir).contains_key(name) {
            return Err(format!("File '{name}' already exists in directory '{}'.", self.name(dir)));
        }
        let file = self.new_file(name, content);
        self.contents_mut(dir).insert(name.to_owned(), file);
        Ok(file)
    }

    /// `Directory._add_directory`, with its `ValueError` when the name is taken.
    fn add_directory(&mut self, dir: usize, name: &str) -> Result<usize, String> {
        if self.contents(dir).contains_key(name) {
            return Err(format!("Directory '{name}' already exists in directory '{}'.", self.name(dir)));
        }
        let sub = self.new_dir(name, Some(dir));
        self.contents_mut(dir).insert(name.to_owned(), sub);
        Ok(sub)
    }

    fn set_dict(&mut self, dir: usize, dict: usize) {
        if let Node::Dir { contents, .. } = &mut self.nodes[dir] {
            *contents = dict;
        }
    }

    /// `_navigate_to_directory`: the directory a path names, or the `cd:` error dict.
    fn navigate(&self, path: Option<&str>) -> Result<usize, Value> {
        let path = match path {
            None | Some(".") => return Ok(self.cwd),
            Some("/") => return Ok(self.root),
            Some(p) => p,
        };
        let mut dir = if path.starts_with('/') { self.root } else { self.cwd };
        for part in path.trim_matches('/').split('/') {
            match self.get_item(dir, part) {
                Some(next) if self.is_dir(next) => dir = next,
                _ => return Err(error(format!("cd: '{path}': No such file or directory"))),
            }
        }
        Ok(dir)
    }

    /// A node as the state check sees it: `File(name, content)` or
    /// `Directory(name, contents)`. A directory nested in itself (which upstream cannot
    /// compare either) is cut off with `...`.
    fn node_value(&self, node: usize, depth: usize) -> Value {
        match &self.nodes[node] {
            Node::File { name, content } => Value::Object {
                class: "File",
                fields: dict! { "name" => name.as_str(), "content" => content.as_str() },
            },
            Node::Dir { name, contents, .. } => {
                let contents: Dict = if depth >= MAX_DEPTH {
                    dict! { "..." => Value::Ellipsis }
                } else {
                    self.dicts[*contents]
                        .iter()
                        .map(|(k, &child)| (Key::from(k.as_str()), self.node_value(child, depth + 1)))
                        .collect()
                };
                Value::Object { class: "Directory", fields: dict! { "name" => name.as_str(), "contents" => contents } }
            }
        }
    }

    /// `_load_directory`: fills `dir` from a scenario's `contents` dict.
    fn load_directory(&mut self, current: &Dict, dir: usize, lc: Option<&LcFiller>) -> Result<(), String> {
        let mut bottommost = true;
        for (key, data) in current {
            let name = key.as_str().ok_or("directory entries must be named by strings")?;
            let data = data.as_dict().ok_or_else(|| format!("entry '{name}' must be a dict"))?;
            let kind = data.get(&Key::from("type")).ok_or_else(|| format!("entry '{name}' has no 'type'"))?;
            match kind.as_str() {
                Some("directory") => {
                    bottommost = false;
                    let sub = self.new_dir(name, Some(dir));
                    let contents = data
                        .get(&Key::from("contents"))
                        .and_then(Value::as_dict)
                        .ok_or_else(|| format!("directory '{name}' has no 'contents' dict"))?;
                    self.load_directory(contents, sub, lc)?;
                    self.contents_mut(dir).insert(name.to_owned(), sub);
                }
                Some("file") => {
                    let mut content = data
                        .get(&Key::from("content"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("file '{name}' has no 'content' string"))?
                        .to_owned();
                    if let Some(lc) = lc
                        && !lc.tail_used.iter().any(|t| t == name)
                    {
                        content.push_str(&lc.content_extension);
                    }
                    let file = self.new_file(name, &content);
                    self.contents_mut(dir).insert(name.to_owned(), file);
                }
                _ => {}
            }
        }
        if bottommost && let Some(lc) = lc {
            for name in &lc.populate {
                self.add_file(dir, name, "")?;
            }
        }
        Ok(())
    }

    fn pwd(&self) -> Value {
        let mut path = Vec::new();
        let mut dir = Some(self.cwd);
        while let Some(d) = dir {
            path.push(self.name(d));
            dir = self.parent(d);
        }
        path.reverse();
        vdict_one("current_working_directory", format!("/{}", path.join("/")))
    }

    fn ls(&self, all: bool) -> Value {
        let items: Vec<Value> = self
            .contents(self.cwd)
            .keys()
            .filter(|k| all || !k.starts_with('.'))
            .map(|k| Value::from(k.as_str()))
            .collect();
        Value::Dict(dict! { "current_directory_content" => Value::List(items) })
    }

    fn cd(&mut self, folder: &str) -> Value {
        let mut folder = folder.trim_end_matches('/');
        if folder.is_empty() {
            folder = "/";
        }
        if !matches!(folder, "." | ".." | "/") && folder.contains('/') {
            return error(format!("cd: {folder}: Unsupported path. Only one folder level at a time is supported."));
        }
        if folder == ".." {
            return match self.parent(self.cwd) {
                Some(p) => {
                    self.cwd = p;
                    Value::Dict(Dict::new())
                }
                // Only the root has no parent.
                None => error("Current directory is already the root. Cannot go back.".into()),
            };
        }
        match self.navigate(Some(folder)) {
            Ok(dir) => {
                self.cwd = dir;
                vdict_one("current_working_directory", self.name(dir).to_owned())
            }
            Err(e) => e,
        }
    }

    fn mkdir(&mut self, dir_name: &str) -> Result<Value, String> {
        if dir_name.contains(|c| INVALID_NAME_CHARS.contains(c)) {
            return Ok(error(format!("mkdir: cannot create directory '{dir_name}': Invalid character")));
        }
        if self.in_cwd(dir_name) {
            return Ok(error(format!("mkdir: cannot create directory '{dir_name}': File exists")));
        }
        self.add_directory(self.cwd, dir_name)?;
        Ok(Value::None)
    }

    fn touch(&mut self, file_name: &str) -> Result<Value, String> {
        if file_name.contains(|c| INVALID_NAME_CHARS.contains(c)) {
            return Ok(error(format!("touch: cannot touch '{file_name}': Invalid character")));
        }
        if self.in_cwd(file_name) {
            return Ok(error(format!("touch: cannot touch '{file_name}': File exists")));
        }
        self.add_file(self.cwd, file_name, "")?;
        Ok(Value::None)
    }

    fn echo(&mut self, content: &Value, file_name: Option<&str>) -> Result<Value, String> {
        let terminal = || Value::Dict(dict! { "terminal_output" => content.clone() });
        let Some(file_name) = file_name else { return Ok(terminal()) };
        if file_name.contains(|c| INVALID_NAME_CHARS.contains(c)) {
            return Ok(error(format!("echo: cannot write to '{file_name}': Invalid character")));
        }
        if file_name.is_empty() {
            return Ok(terminal());
        }
        if !self.in_cwd(file_name) {
            return Ok(error(format!("echo: cannot write to '{file_name}': No such file")));
        }
        let node = self.get_item(self.cwd, file_name).expect("present");
        match &mut self.nodes[node] {
            Node::File { content: c, .. } => {
                *c = content.as_str().ok_or("echo: content must be a string")?.to_owned();
                Ok(Value::None)
            }
            Node::Dir { .. } => Err("'Directory' object has no attribute '_write'".into()),
        }
    }

    fn cat(&self, file_name: &str) -> Value {
        if file_name.contains(|c| INVALID_NAME_CHARS.contains(c)) {
            return error(format!("cat: '{file_name}': Invalid character"));
        }
        if !self.in_cwd(file_name) {
            return error(format!("cat: '{file_name}': No such file or directory"));
        }
        match self.cwd_file(file_name) {
            Some(content) => vdict_one("file_content", content.to_owned()),
            None => error(format!("cat: '{file_name}': Is a directory")),
        }
    }

    fn find(&self, path: Option<&str>, name: Option<&str>) -> Result<Value, String> {
        let target = match self.navigate(path) {
            Ok(dir) => dir,
            Err(_) => {
                let path = path.unwrap_or_default();
                return Ok(error(format!("find: '{path}': No such file or directory")));
            }
        };
        let Some(path) = path else { return Err("'NoneType' object has no attribute 'rstrip'".into()) };
        let mut matches = Vec::new();
        self.search(target, path.trim_end_matches('/'), name, 0, &mut matches)?;
        Ok(Value::Dict(dict! { "matches" => matches }))
    }

    fn search(
        &self,
        dir: usize,
        base: &str,
        name: Option<&str>,
        depth: usize,
        matches: &mut Vec<String>,
    ) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err("maximum recursion depth exceeded while calling a Python object".into());
        }
        for (item_name, &item) in self.contents(dir) {
            let item_path = format!("{base}/{item_name}");
            if name.is_none_or(|n| item_name.contains(n)) {
                matches.push(item_path.clone());
            }
            if self.is_dir(item) {
                self.search(item, &item_path, name, depth + 1, matches)?;
            }
        }
        Ok(())
    }

    fn wc(&self, file_name: &str, mode: &Value) -> Value {
        let mode = match mode.as_str() {
            Some(m @ ("l" | "w" | "c")) => m,
            _ => return error(format!("wc: invalid mode '{}'", mode.py_str())),
        };
        let Some(content) = self.cwd_file(file_name) else {
            return error(format!("wc: {file_name}: No such file or directory"));
        };
        let (count, kind) = match mode {
            "l" => (splitlines(content).len(), "lines"),
            "w" => (word_count(content), "words"),
            _ => (content.chars().count(), "characters"),
        };
        Value::Dict(dict! { "count" => count, "type" => kind })
    }

    fn sort(&self, file_name: &str) -> Value {
        let Some(content) = self.cwd_file(file_name) else {
            return error(format!("sort: {file_name}: No such file or directory"));
        };
        let mut lines = splitlines(content);
        lines.sort_unstable();
        vdict_one("sorted_content", lines.join("\n"))
    }

    fn grep(&self, file_name: &str, pattern: &str) -> Value {
        let Some(content) = self.cwd_file(file_name) else {
            return error(format!("grep: {file_name}: No such file or directory"));
        };
        let lines: Vec<&str> = splitlines(content).into_iter().filter(|l| l.contains(pattern)).collect();
        Value::Dict(dict! { "matching_lines" => lines })
    }

    fn size(&self, node: usize, depth: usize) -> Result<u64, String> {
        if depth >= MAX_DEPTH {
            return Err("maximum recursion depth exceeded".into());
        }
        match &self.nodes[node] {
            Node::File { content, .. } => Ok(content.len() as u64),
            Node::Dir { contents, .. } => {
                self.dicts[*contents].values().try_fold(0u64, |acc, &c| Ok(acc + self.size(c, depth + 1)?))
            }
        }
    }

    fn du(&self, human_readable: bool) -> Result<Value, String> {
        let total = self.size(self.cwd, 0)?;
        let text = if human_readable {
            let mut size = total as f64;
            let mut text = None;
            for unit in ["B", "KB", "MB", "GB", "TB"] {
                if size < 1024.0 {
                    text = Some(format!("{size:.2} {unit}"));
                    break;
                }
                size /= 1024.0;
            }
            text.unwrap_or_else(|| format!("{size:.2} PB"))
        } else {
            format!("{total} bytes")
        };
        Ok(vdict_one("disk_usage", text))
    }

    fn tail(&self, file_name: &str, lines: i64) -> Value {
        let Some(content) = self.cwd_file(file_name) else {
            return error(format!("tail: {file_name}: No such file or directory"));
        };
        let all = splitlines(content);
        let len = all.len() as i64;
        let lines = lines.min(len);
        // `all[-lines:]` with Python's slice clamping.
        let start = if lines > 0 { len - lines } else { (-lines).min(len) };
        vdict_one("last_lines", all[start as usize..].join("\n"))
    }

    fn diff(&self, file_name1: &str, file_name2: &str) -> Value {
        if let (Some(a), Some(b)) = (self.cwd_file(file_name1), self.cwd_file(file_name2)) {
            let lines: Vec<String> = splitlines(a)
                .into_iter()
                .zip(splitlines(b))
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("- {x}\n+ {y}"))
                .collect();
            return vdict_one("diff_lines", lines.join("\n"));
        }
        error(format!("diff: {file_name1} or {file_name2}: No such file or directory"))
    }

    fn mv(&mut self, source: &str, destination: &str) -> Result<Value, String> {
        if !self.in_cwd(source) {
            return Ok(error(format!("mv: cannot move '{source}': No such file or directory")));
        }
        let item = self.get_item(self.cwd, source).expect("present");
        if destination.contains('/') {
            return Ok(error("mv: path not allowed in destination. Provide only a file or directory name.".into()));
        }
        let cwd = self.cwd;
        if self.in_cwd(destination) {
            let dest = self.get_item(cwd, destination).expect("present");
            if !self.is_dir(dest) {
                return Ok(error(format!("mv: cannot move '{source}' to '{destination}': Not a directory")));
            }
            if self.contents(dest).contains_key(source) {
                return Ok(error(format!("mv: cannot move '{source}' to '{destination}/{source}': File exists")));
            }
            self.contents_mut(cwd).shift_remove(source);
            self.place(item, dest, source, false)?;
            Ok(vdict_one("result", format!("'{source}' moved to '{destination}/{source}'")))
        } else {
            self.contents_mut(cwd).shift_remove(source);
            self.place(item, cwd, destination, false)?;
            Ok(vdict_one("result", format!("'{source}' moved to '{destination}'")))
        }
    }

    /// Puts `item` into `dir` under `name` as `mv` (`copy == false`) and `cp` do: a new
    /// file with the same content, or a new directory holding the item's contents dict
    /// itself (`mv`) or a shallow copy of it (`cp`).
    fn place(&mut self, item: usize, dir: usize, name: &str, copy: bool) -> Result<(), String> {
        if let Some(content) = self.file_content(item) {
            let content = content.to_owned();
            self.add_file(dir, name, &content)?;
        } else {
            let new_dir = self.add_directory(dir, name)?;
            let src = self.dict_of(item);
            let dict = if copy {
                self.dicts.push(self.dicts[src].clone());
                self.dicts.len() - 1
            } else {
                src
            };
            self.set_dict(new_dir, dict);
        }
        Ok(())
    }

    fn rm(&mut self, file_name: &str) -> Value {
        if !self.in_cwd(file_name) {
            return error(format!("rm: cannot remove '{file_name}': No such file or directory"));
        }
        self.contents_mut(self.cwd).shift_remove(file_name);
        vdict_one("result", format!("'{file_name}' removed"))
    }

    fn rmdir(&mut self, dir_name: &str) -> Value {
        if !self.in_cwd(dir_name) {
            return error(format!("rmdir: cannot remove '{dir_name}': No such file or directory"));
        }
        let item = self.get_item(self.cwd, dir_name).expect("present");
        if !self.is_dir(item) {
            return error(format!("rmdir: cannot remove '{dir_name}': Not a directory"));
        }
        if !self.contents(item).is_empty() {
            return error(format!("rmdir: cannot remove '{dir_name}': Directory not empty"));
        }
        self.contents_mut(self.cwd).shift_remove(dir_name);
        vdict_one("result", format!("'{dir_name}' removed"))
    }

    fn cp(&mut self, source: &str, destination: &str) -> Result<Value, String> {
        if !self.in_cwd(source) {
            return Ok(error(format!("cp: cannot copy '{source}': No such file or directory")));
        }
        let item = self.get_item(self.cwd, source).expect("present");
        if destination.contains('/') {
            return Ok(error("cp: path not allowed in destination. Provide only a file or directory name.".into()));
        }
        let cwd = self.cwd;
        if self.in_cwd(destination) {
            let dest = self.get_item(cwd, destination).expect("present");
            if !self.is_dir(dest) {
                return Ok(error(format!("cp: cannot copy '{source}' to '{destination}': Not a directory")));
            }
            // Upstream looks for "destination/source" among the destination's items.
            if self.contents(dest).contains_key(&format!("{destination}/{source}")) {
                return Ok(error(format!("cp: cannot copy '{source}' to '{destination}/{source}': File exists")));
            }
            self.place(item, dest, source, true)?;
            Ok(vdict_one("result", format!("'{source}' copied to '{destination}/{source}'")))
        } else {
            self.place(item, cwd, destination, true)?;
            Ok(vdict_one("result", format!("'{source}' copied to '{destination}'")))
        }
    }
}

fn vdict_one(key: &str, value: String) -> Value {
    Value::Dict(dict! { key => value })
}

/// The long-context constants this class uses.
struct LcFiller {
    content_extension: String,
    tail_used: Vec<String>,
    populate: Vec<String>,
}

impl LcFiller {
    fn from(lc: &LongContext) -> Result<Self, String> {
        let strings = |name: &str| -> Result<Vec<String>, String> {
            lc.get(name)?
                .as_list()
                .ok_or_else(|| format!("{name} must be a list"))?
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("{name} must hold strings")))
                .collect()
        };
        Ok(LcFiller {
            content_extension: lc
                .get("FILE_CONTENT_EXTENSION")?
                .as_str()
                .ok_or("FILE_CONTENT_EXTENSION must be a string")?
                .to_owned(),
            tail_used: strings("FILES_TAIL_USED")?,
            populate: strings("POPULATE_FILE_EXTENSION")?,
        })
    }
}

const SIG_NONE: &[Param] = &[];
const SIG_LS: &[Param] = &[opt("a", Default::Bool(false))];
const SIG_CD: &[Param] = &[req("folder")];
const SIG_DIR_NAME: &[Param] = &[req("dir_name")];
const SIG_FILE_NAME: &[Param] = &[req("file_name")];
const SIG_ECHO: &[Param] = &[req("content"), opt("file_name", Default::None)];
const SIG_FIND: &[Param] = &[opt("path", Default::Str(".")), opt("name", Default::None)];
const SIG_WC: &[Param] = &[req("file_name"), opt("mode", Default::Str("l"))];
const SIG_GREP: &[Param] = &[req("file_name"), req("pattern")];
const SIG_DU: &[Param] = &[opt("human_readable", Default::Bool(false))];
const SIG_TAIL: &[Param] = &[req("file_name"), opt("lines", Default::Int(10))];
const SIG_DIFF: &[Param] = &[req("file_name1"), req("file_name2")];
const SIG_MOVE: &[Param] = &[req("source"), req("destination")];

impl Environment for GorillaFileSystem {
    fn class_name(&self) -> &'static str {
        CLASS
    }

    fn load_scenario(&mut self, scenario: &Dict, long_context: Option<&LongContext>) -> Result<(), String> {
        let lc = long_context.map(LcFiller::from).transpose()?;
        *self = GorillaFileSystem { long_context: long_context.is_some(), ..GorillaFileSystem::default() };
        if let Some(root) = scenario.get(&Key::from("root")) {
            let root = root.as_dict().ok_or("'root' must be a dict")?;
            let (name, data) = root.first().ok_or("'root' is empty")?;
            let name = name.as_str().ok_or("the root must be named by a string")?;
            let contents = data
                .as_dict()
                .and_then(|d| d.get(&Key::from("contents")))
                .and_then(Value::as_dict)
                .ok_or("the root has no 'contents' dict")?;
            self.nodes.clear();
            self.dicts.clear();
            self.root = self.new_dir(name, None);
            self.load_directory(contents, self.root, lc.as_ref())?;
        }
        self.cwd = self.root;
        Ok(())
    }

    fn functions(&self) -> &'static [&'static str] {
        FUNCTIONS
    }

    fn call(&mut self, call: &Call) -> Result<Value, String> {
        let sig = match call.name.as_str() {
            "pwd" => SIG_NONE,
            "ls" => SIG_LS,
            "cd" => SIG_CD,
            "mkdir" | "rmdir" => SIG_DIR_NAME,
            "touch" | "cat" | "sort" | "rm" => SIG_FILE_NAME,
            "echo" => SIG_ECHO,
            "find" => SIG_FIND,
            "wc" => SIG_WC,
            "grep" => SIG_GREP,
            "du" => SIG_DU,
            "tail" => SIG_TAIL,
            "diff" => SIG_DIFF,
            "mv" | "cp" => SIG_MOVE,
            other => return Err(format!("'{CLASS}' object has no attribute '{other}'")),
        };
        let b = bind(CLASS, call, sig)?;
        match call.name.as_str() {
            "pwd" => Ok(self.pwd()),
            "ls" => Ok(self.ls(b.get("a").truthy())),
            "cd" => Ok(self.cd(b.str("folder")?)),
            "mkdir" => self.mkdir(b.str("dir_name")?),
            "touch" => self.touch(b.str("file_name")?),
            "echo" => self.echo(b.get("content"), b.opt_str("file_name")?),
            "cat" => Ok(self.cat(b.str("file_name")?)),
            "find" => self.find(b.opt_str("path")?, b.opt_str("name")?),
            "wc" => Ok(self.wc(b.str("file_name")?, b.get("mode"))),
            "sort" => Ok(self.sort(b.str("file_name")?)),
            "grep" => Ok(self.grep(b.str("file_name")?, b.str("pattern")?)),
            "du" => self.du(b.get("human_readable").truthy()),
            "tail" => Ok(self.tail(b.str("file_name")?, b.int("lines")?)),
            "diff" => Ok(self.diff(b.str("file_name1")?, b.str("file_name2")?)),
            "mv" => self.mv(b.str("source")?, b.str("destination")?),
            "rm" => Ok(self.rm(b.str("file_name")?)),
            "rmdir" => Ok(self.rmdir(b.str("dir_name")?)),
            "cp" => self.cp(b.str("source")?, b.str("destination")?),
            _ => unreachable!("matched above"),
        }
    }

    fn state(&self) -> Dict {
        dict! { "long_context" => self.long_context, "root" => self.node_value(self.root, 0) }
    }

    fn box_clone(&self) -> Box<dyn Environment> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::parse_calls;

    /// Loads a scenario given as JSON (the `GorillaFileSystem` part of `initial_config`).
    fn fs(json: &str, lc: Option<&LongContext>) -> GorillaFileSystem {
        let mut fs = GorillaFileSystem::default();
        let scenario = match Value::from_json(&serde_json::from_str(json).unwrap()) {
            Value::Dict(d) => d,
            _ => panic!("scenario must be an object"),
        };
        fs.load_scenario(&scenario, lc).unwrap();
        fs
    }

    fn sample() -> GorillaFileSystem {
        fs(
            r#"{"root": {"alex": {"type": "directory", "contents": {
                "workspace": {"type": "directory", "contents": {
                    "log.txt": {"type": "file", "content": "line one\nError: bad thing\nline three\nError: again\n"},
                    ".hidden": {"type": "file", "content": "secret"},
                    "archive": {"type": "directory", "contents": {}},
                    "sub": {"type": "directory", "contents": {
                        "deep.txt": {"type": "file", "content": "deep content"},
                        "inner": {"type": "directory", "contents": {"x.txt": {"type": "file", "content": "x"}}}}}}},
                "readme.txt": {"type": "file", "content": "Hello world"},
                "other.txt": {"type": "file", "content": "Hello there\nsecond line\nthird"}}}}}"#,
            None,
        )
    }

    /// Runs one call and gives BFCL's result string.
    fn run(fs: &mut GorillaFileSystem, text: &str) -> String {
        let call = parse_calls(text).unwrap().remove(0);
        match fs.call(&call) {
            Ok(v) => v.to_result_string(),
            Err(e) => format!("Error during execution: {e}"),
        }
    }

    fn check(fs: &mut GorillaFileSystem, cases: &[(&str, &str)]) {
        for (call, want) in cases {
            assert_eq!(run(fs, call), *want, "{call}");
        }
    }

    #[test]
    fn python_string_helpers() {
        let text = "one\ntwo\r\nthree\rfour\x0bfive\x0csix\x1cseven\u{2028}eight\u{85}nine\n\nten";
        assert_eq!(
            splitlines(text),
            ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "", "ten"]
        );
        assert_eq!(splitlines("a\n"), ["a"]);
        assert!(splitlines("").is_empty());
        assert_eq!(word_count("word1\u{a0}word2\x1cword3\x1fword4 \t word5\u{3000}word6\u{200b}word7"), 6);
    }

    #[test]
    fn default_root_and_pwd() {
        let mut fs = fs("{}", None);
        check(
            &mut fs,
            &[
                ("pwd()", r#"{"current_working_directory": "//"}"#),
                ("cd(folder='..')", r#"{"error": "Current directory is already the root. Cannot go back."}"#),
                ("mkdir(dir_name='d')", "None"),
                ("cd(folder='d')", r#"{"current_working_directory": "d"}"#),
                ("pwd()", r#"{"current_working_directory": "///d"}"#),
                ("touch(file_name='t.txt')", "None"),
                ("cd(folder='..')", "{}"),
                ("find(path='/')", r#"{"matches": ["/d", "/d/t.txt"]}"#),
                ("du()", r#"{"disk_usage": "0 bytes"}"#),
            ],
        );
        assert_eq!(fs.state()[&Key::from("long_context")], Value::Bool(false));
    }

    #[test]
    fn cd_paths_and_errors() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                ("cd(folder='workspace/')", r#"{"current_working_directory": "workspace"}"#),
                ("cd(folder='sub')", r#"{"current_working_directory": "sub"}"#),
                ("pwd()", r#"{"current_working_directory": "/alex/workspace/sub"}"#),
                (
                    "cd(folder='inner/x')",
                    r#"{"error": "cd: inner/x: Unsupported path. Only one folder level at a time is supported."}"#,
                ),
                ("cd(folder='./')", r#"{"current_working_directory": "sub"}"#),
                ("cd(folder='../')", "{}"),
                ("cd(folder='')", r#"{"current_working_directory": "alex"}"#),
                ("cd(folder='readme.txt')", r#"{"error": "cd: 'readme.txt': No such file or directory"}"#),
                ("cd(folder='nope')", r#"{"error": "cd: 'nope': No such file or directory"}"#),
            ],
        );
    }

    #[test]
    fn ls_mkdir_touch_echo_cat() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                ("cd(folder='workspace')", r#"{"current_working_directory": "workspace"}"#),
                ("ls()", r#"{"current_directory_content": ["log.txt", "archive", "sub"]}"#),
                ("ls(a=True)", r#"{"current_directory_content": ["log.txt", ".hidden", "archive", "sub"]}"#),
                ("mkdir(dir_name='a/b')", r#"{"error": "mkdir: cannot create directory 'a/b': Invalid character"}"#),
                ("mkdir(dir_name='sub')", r#"{"error": "mkdir: cannot create directory 'sub': File exists"}"#),
                ("touch(file_name='q?.txt')", r#"{"error": "touch: cannot touch 'q?.txt': Invalid character"}"#),
                ("touch(file_name='log.txt')", r#"{"error": "touch: cannot touch 'log.txt': File exists"}"#),
                ("echo(content='just print')", r#"{"terminal_output": "just print"}"#),
                ("echo(content='x', file_name='')", r#"{"terminal_output": "x"}"#),
                ("echo(content='x', file_name='b*')", r#"{"error": "echo: cannot write to 'b*': Invalid character"}"#),
                (
                    "echo(content='x', file_name='no.txt')",
                    r#"{"error": "echo: cannot write to 'no.txt': No such file"}"#,
                ),
                (
                    "echo(content='x', file_name='sub')",
                    "Error during execution: 'Directory' object has no attribute '_write'",
                ),
                ("touch(file_name='new.txt')", "None"),
                ("echo(content='text', file_name='new.txt')", "None"),
                ("cat(file_name='new.txt')", r#"{"file_content": "text"}"#),
                ("cat(file_name='sub')", r#"{"error": "cat: 'sub': Is a directory"}"#),
                ("cat(file_name='nope')", r#"{"error": "cat: 'nope': No such file or directory"}"#),
                ("cat(file_name='a/b')", r#"{"error": "cat: 'a/b': Invalid character"}"#),
                // A file named "." is found, but `.` always means the directory itself.
                ("touch(file_name='.')", "None"),
                ("cat(file_name='.')", r#"{"error": "cat: '.': Is a directory"}"#),
                ("rm(file_name='.')", r#"{"result": "'.' removed"}"#),
            ],
        );
    }

    #[test]
    fn find_wc_sort_grep_tail_diff() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                (
                    "find(name='txt')",
                    r#"{"matches": ["./workspace/log.txt", "./workspace/sub/deep.txt", "./workspace/sub/inner/x.txt", "./readme.txt", "./other.txt"]}"#,
                ),
                (
                    "find(path='/workspace/sub')",
                    r#"{"matches": ["/workspace/sub/deep.txt", "/workspace/sub/inner", "/workspace/sub/inner/x.txt"]}"#,
                ),
                ("find(path='workspace/sub/inner')", r#"{"matches": ["workspace/sub/inner/x.txt"]}"#),
                ("find(path='readme.txt')", r#"{"error": "find: 'readme.txt': No such file or directory"}"#),
                ("find(path='//')", r#"{"error": "find: '//': No such file or directory"}"#),
                ("wc(file_name='other.txt')", r#"{"count": 3, "type": "lines"}"#),
                ("wc(file_name='other.txt', mode='w')", r#"{"count": 5, "type": "words"}"#),
                ("wc(file_name='other.txt', mode='c')", r#"{"count": 29, "type": "characters"}"#),
                ("wc(file_name='other.txt', mode='x')", r#"{"error": "wc: invalid mode 'x'"}"#),
                ("wc(file_name='workspace')", r#"{"error": "wc: workspace: No such file or directory"}"#),
                ("sort(file_name='other.txt')", r#"{"sorted_content": "Hello there\nsecond line\nthird"}"#),
                ("sort(file_name='nope')", r#"{"error": "sort: nope: No such file or directory"}"#),
                ("grep(file_name='other.txt', pattern='i')", r#"{"matching_lines": ["second line", "third"]}"#),
                ("grep(file_name='nope', pattern='x')", r#"{"error": "grep: nope: No such file or directory"}"#),
                ("tail(file_name='other.txt', lines=1)", r#"{"last_lines": "third"}"#),
                ("tail(file_name='other.txt', lines=0)", r#"{"last_lines": "Hello there\nsecond line\nthird"}"#),
                ("tail(file_name='other.txt', lines=-1)", r#"{"last_lines": "second line\nthird"}"#),
                ("tail(file_name='other.txt', lines=-100)", r#"{"last_lines": ""}"#),
                ("tail(file_name='workspace')", r#"{"error": "tail: workspace: No such file or directory"}"#),
                (
                    "diff(file_name1='readme.txt', file_name2='other.txt')",
                    r#"{"diff_lines": "- Hello world\n+ Hello there"}"#,
                ),
                (
                    "diff(file_name1='readme.txt', file_name2='workspace')",
                    r#"{"error": "diff: readme.txt or workspace: No such file or directory"}"#,
                ),
            ],
        );
    }

    #[test]
    fn du_units() {
        let mut fs = fs(
            &format!(
                r#"{{"root": {{"r": {{"type": "directory", "contents": {{"big": {{"type": "file", "content": "{}"}}}}}}}}}}"#,
                "x".repeat(1152)
            ),
            None,
        );
        check(
            &mut fs,
            &[
                ("du()", r#"{"disk_usage": "1152 bytes"}"#),
                // 1.125 is a tie: rounded to even, as Python's format does.
                ("du(human_readable=True)", r#"{"disk_usage": "1.12 KB"}"#),
                ("echo(content='é', file_name='big')", "None"),
                ("du(human_readable=True)", r#"{"disk_usage": "2.00 B"}"#),
            ],
        );
    }

    #[test]
    fn mv_and_its_errors() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                (
                    "mv(source='nope', destination='x')",
                    r#"{"error": "mv: cannot move 'nope': No such file or directory"}"#,
                ),
                (
                    "mv(source='readme.txt', destination='a/b')",
                    r#"{"error": "mv: path not allowed in destination. Provide only a file or directory name."}"#,
                ),
                (
                    "mv(source='readme.txt', destination='other.txt')",
                    r#"{"error": "mv: cannot move 'readme.txt' to 'other.txt': Not a directory"}"#,
                ),
                (
                    "mv(source='other.txt', destination='renamed.txt')",
                    r#"{"result": "'other.txt' moved to 'renamed.txt'"}"#,
                ),
                (
                    "mv(source='readme.txt', destination='workspace')",
                    r#"{"result": "'readme.txt' moved to 'workspace/readme.txt'"}"#,
                ),
                ("ls()", r#"{"current_directory_content": ["workspace", "renamed.txt"]}"#),
                ("cd(folder='workspace')", r#"{"current_working_directory": "workspace"}"#),
                ("touch(file_name='archive2')", "None"),
                ("mkdir(dir_name='box')", "None"),
                ("cd(folder='box')", r#"{"current_working_directory": "box"}"#),
                ("mkdir(dir_name='archive')", "None"),
                ("cd(folder='..')", "{}"),
                (
                    "mv(source='archive', destination='box')",
                    r#"{"error": "mv: cannot move 'archive' to 'box/archive': File exists"}"#,
                ),
            ],
        );
    }

    #[test]
    fn moved_directory_children_keep_their_old_parent() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                ("cd(folder='workspace')", r#"{"current_working_directory": "workspace"}"#),
                ("mv(source='sub', destination='moved')", r#"{"result": "'sub' moved to 'moved'"}"#),
                ("cd(folder='moved')", r#"{"current_working_directory": "moved"}"#),
                ("cd(folder='inner')", r#"{"current_working_directory": "inner"}"#),
                ("pwd()", r#"{"current_working_directory": "/alex/workspace/sub/inner"}"#),
                ("cd(folder='..')", "{}"),
                ("pwd()", r#"{"current_working_directory": "/alex/workspace/sub"}"#),
                // The old directory and the moved one share one contents dict.
                ("touch(file_name='via_old.txt')", "None"),
                ("cd(folder='..')", "{}"),
                ("cd(folder='moved')", r#"{"current_working_directory": "moved"}"#),
                ("ls()", r#"{"current_directory_content": ["deep.txt", "inner", "via_old.txt"]}"#),
            ],
        );
    }

    #[test]
    fn copied_directory_shares_its_items() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                ("cd(folder='workspace')", r#"{"current_working_directory": "workspace"}"#),
                ("cp(source='sub', destination='sub2')", r#"{"result": "'sub' copied to 'sub2'"}"#),
                ("cd(folder='sub2')", r#"{"current_working_directory": "sub2"}"#),
                ("echo(content='edited', file_name='deep.txt')", "None"),
                ("touch(file_name='only_in_copy.txt')", "None"),
                ("cd(folder='inner')", r#"{"current_working_directory": "inner"}"#),
                ("pwd()", r#"{"current_working_directory": "/alex/workspace/sub/inner"}"#),
                ("cd(folder='..')", "{}"),
                ("ls()", r#"{"current_directory_content": ["deep.txt", "inner"]}"#),
                ("cat(file_name='deep.txt')", r#"{"file_content": "edited"}"#),
                ("cd(folder='..')", "{}"),
                ("cp(source='log.txt', destination='sub')", r#"{"result": "'log.txt' copied to 'sub/log.txt'"}"#),
                (
                    "cp(source='log.txt', destination='sub')",
                    "Error during execution: File 'log.txt' already exists in directory 'sub'.",
                ),
                ("cp(source='archive', destination='sub')", r#"{"result": "'archive' copied to 'sub/archive'"}"#),
                (
                    "cp(source='archive', destination='sub')",
                    "Error during execution: Directory 'archive' already exists in directory 'sub'.",
                ),
                (
                    "cp(source='log.txt', destination='log.txt')",
                    r#"{"error": "cp: cannot copy 'log.txt' to 'log.txt': Not a directory"}"#,
                ),
                ("cp(source='x', destination='y')", r#"{"error": "cp: cannot copy 'x': No such file or directory"}"#),
                (
                    "cp(source='log.txt', destination='a/b')",
                    r#"{"error": "cp: path not allowed in destination. Provide only a file or directory name."}"#,
                ),
            ],
        );
    }

    #[test]
    fn directory_copied_into_itself_is_cut_off() {
        let mut fs = fs(
            r#"{"root": {"r": {"type": "directory", "contents": {"sub": {"type": "directory", "contents": {"f.txt": {"type": "file", "content": "abc"}}}}}}}"#,
            None,
        );
        check(
            &mut fs,
            &[
                ("cp(source='sub', destination='sub')", r#"{"result": "'sub' copied to 'sub/sub'"}"#),
                ("du()", "Error during execution: maximum recursion depth exceeded"),
                ("find()", "Error during execution: maximum recursion depth exceeded while calling a Python object"),
                ("cd(folder='sub')", r#"{"current_working_directory": "sub"}"#),
                ("cd(folder='sub')", r#"{"current_working_directory": "sub"}"#),
                ("cd(folder='sub')", r#"{"current_working_directory": "sub"}"#),
                ("pwd()", r#"{"current_working_directory": "/r/sub/sub"}"#),
            ],
        );
        let _ = fs.state(); // terminates
    }

    #[test]
    fn rm_and_rmdir() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                ("rm(file_name='nope')", r#"{"error": "rm: cannot remove 'nope': No such file or directory"}"#),
                ("rmdir(dir_name='other.txt')", r#"{"error": "rmdir: cannot remove 'other.txt': Not a directory"}"#),
                (
                    "rmdir(dir_name='workspace')",
                    r#"{"error": "rmdir: cannot remove 'workspace': Directory not empty"}"#,
                ),
                ("rmdir(dir_name='nope')", r#"{"error": "rmdir: cannot remove 'nope': No such file or directory"}"#),
                ("rm(file_name='workspace')", r#"{"result": "'workspace' removed"}"#),
                ("mkdir(dir_name='e')", "None"),
                ("rmdir(dir_name='e')", r#"{"result": "'e' removed"}"#),
                ("ls()", r#"{"current_directory_content": ["readme.txt", "other.txt"]}"#),
            ],
        );
        let root = &fs.state()[&Key::from("root")];
        let want = Value::Object {
            class: "Directory",
            fields: dict! {
                "name" => "alex",
                "contents" => dict! {
                    "readme.txt" => Value::Object { class: "File", fields: dict! { "name" => "readme.txt", "content" => "Hello world" } },
                    "other.txt" => Value::Object { class: "File", fields: dict! { "name" => "other.txt", "content" => "Hello there\nsecond line\nthird" } },
                },
            },
        };
        assert_eq!(*root, want);
    }

    #[test]
    fn argument_errors_are_pythons() {
        let mut fs = sample();
        check(
            &mut fs,
            &[
                (
                    "cd()",
                    "Error during execution: GorillaFileSystem.cd() missing 1 required positional argument: 'folder'",
                ),
                (
                    "ls(True, False)",
                    "Error during execution: GorillaFileSystem.ls() takes from 1 to 2 positional arguments but 3 were given",
                ),
                (
                    "ls(True, False, x=1)",
                    "Error during execution: GorillaFileSystem.ls() got an unexpected keyword argument 'x'",
                ),
                (
                    "ls(True, False, a=1)",
                    "Error during execution: GorillaFileSystem.ls() got multiple values for argument 'a'",
                ),
                (
                    "diff(1, 2, 3)",
                    "Error during execution: GorillaFileSystem.diff() takes 3 positional arguments but 4 were given",
                ),
                (
                    "pwd(1)",
                    "Error during execution: GorillaFileSystem.pwd() takes 1 positional argument but 2 were given",
                ),
            ],
        );
    }

    #[test]
    fn long_context_filler() {
        let lc = LongContext {
            constants: dict! {
                "FILE_CONTENT_EXTENSION" => " +more",
                "FILES_TAIL_USED" => vec!["keep.txt"],
                "POPULATE_FILE_EXTENSION" => vec!["img1.jpg", "img2.jpg"],
            },
        };
        let mut fs = fs(
            r#"{"root": {"r": {"type": "directory", "contents": {
                "a.txt": {"type": "file", "content": "abc"},
                "keep.txt": {"type": "file", "content": "kept"},
                "d": {"type": "directory", "contents": {}}}}}}"#,
            Some(&lc),
        );
        check(
            &mut fs,
            &[
                ("ls()", r#"{"current_directory_content": ["a.txt", "keep.txt", "d"]}"#),
                ("cat(file_name='a.txt')", r#"{"file_content": "abc +more"}"#),
                ("cat(file_name='keep.txt')", r#"{"file_content": "kept"}"#),
                ("cd(folder='d')", r#"{"current_working_directory": "d"}"#),
                ("ls()", r#"{"current_directory_content": ["img1.jpg", "img2.jpg"]}"#),
            ],
        );
        assert_eq!(fs.state()[&Key::from("long_context")], Value::Bool(true));
        // An empty scenario gets no filler.
        let mut empty = super::GorillaFileSystem::default();
        empty.load_scenario(&Dict::new(), Some(&lc)).unwrap();
        assert_eq!(run(&mut empty, "ls()"), r#"{"current_directory_content": []}"#);
        // A populated name that is already taken fails the load, as upstream's ValueError.
        let mut clash = super::GorillaFileSystem::default();
        let scenario = match Value::from_json(
            &serde_json::from_str(
                r#"{"root": {"r": {"type": "directory", "contents": {"img1.jpg": {"type": "file", "content": ""}}}}}"#,
            )
            .unwrap(),
        ) {
            Value::Dict(d) => d,
            _ => unreachable!(),
        };
        assert_eq!(
            clash.load_scenario(&scenario, Some(&lc)).unwrap_err(),
            "File 'img1.jpg' already exists in directory 'r'."
        );
    }

    #[test]
    fn functions_are_the_public_methods() {
        assert_eq!(FUNCTIONS.len(), 18);
        assert_eq!(new().unwrap().class_name(), "GorillaFileSystem");
    }
}
