// An output directory (upcycled checkpoint, saved model) written under a
// hidden temporary name in the same parent and renamed into place, so the
// output path only ever holds a complete directory or nothing.
//
// The temporary's name says which output and which process it belongs to:
// `.NAME.tmp-PID-RANDOM` (plus `.old` for a replaced tree on file systems
// without an atomic exchange). A process killed while writing leaves its
// temporary behind; the next output started under the same name removes the
// temporaries whose process no longer exists (after putting back a replaced
// tree that a writer killed between its two renames left without an output).

#if canImport(Glibc)
import Glibc
#endif

/// Temporaries of earlier, dead writers of the same output, removed when a new
/// output was started.
public struct StaleTemporaries: Sendable, Equatable {
  /// Directories (or files) removed.
  public var count = 0
  /// Disk space they held (allocated blocks), in bytes.
  public var bytes: UInt64 = 0

  public init(count: Int = 0, bytes: UInt64 = 0) {
    self.count = count
    self.bytes = bytes
  }
}

package final class OutputDirectory {
  package let path: String
  package let temporary: String
  /// What the stale-temporary cleanup removed before this output started.
  package let staleRemoved: StaleTemporaries
  private var committed = false
  private let force: Bool
  /// Whether commit may use the atomic exchange (tests turn it off to run the
  /// two-rename fallback that file systems without the exchange get).
  package var atomicExchange = true

  package init(path: String, force: Bool, input: String) throws {
    var p = path
    while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
    guard !p.isEmpty else { throw MoEError.invalid("output path is empty") }
    let base = FileSystem.baseName(of: p)
    guard base != "." && base != ".." && p != "/" else {
      throw MoEError.invalid("output '\(path)' names \(p == "/" ? "the root directory" : base == "." ? "the current directory" : "a parent directory"); name a new directory for the output instead")
    }
    self.path = p
    self.force = force
    let parent = FileSystem.parent(of: p)
    switch FileSystem.entryKind(parent) {
    case nil:
      throw MoEError.notFound("the output's parent directory '\(parent)' does not exist")
    case .directory?:
      break
    case .symbolicLink? where FileSystem.isDirectory(parent):
      break
    case let what?:
      throw MoEError.invalid("the output's parent '\(parent)' is \(what == .symbolicLink ? "a symbolic link to no directory" : what.description), not a directory")
    }
    OutputDirectory.restoreInterruptedReplacement(of: p)
    if let what = FileSystem.entryKind(p) {
      guard what == .directory else {
        throw MoEError(.exists, "output '\(p)' exists and is \(what); only an existing directory is replaced (with force), so remove it or choose another output")
      }
      guard force else { throw MoEError(.exists, "output '\(p)' already exists (set force to replace it)") }
      try OutputDirectory.checkReplaceable(p, parent: parent, input: input)
    }
    staleRemoved = OutputDirectory.removeStaleTemporaries(of: p)
    temporary = FileSystem.join(parent, "\(OutputDirectory.temporaryPrefix(of: p))\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    guard mkdir(temporary, 0o755) == 0 else {
      let code = errno
      throw MoEError(code == EEXIST ? .exists : .io,
                     "cannot create the output '\(p)': creating its temporary directory '\(temporary)' failed: \(String(cString: strerror(code)))")
    }
  }

  /// Runs `body`, which writes the output into `temporary` and commits it.
  /// I/O errors about files under the hidden temporary directory also name the output.
  package func writing<T>(_ body: () throws -> T) throws -> T {
    do {
      return try body()
    } catch let e as MoEError where e.kind == .io && e.message.contains(temporary) {
      throw MoEError(.io, "writing the output '\(path)' failed: \(e.message)")
    }
  }

  /// An existing directory may be replaced unless it is the current directory
  /// (or holds it), a mount point, the input or a directory holding the input.
  private static func checkReplaceable(_ p: String, parent: String, input: String) throws {
    guard let ro = realPath(p) else { throw MoEError.io("cannot resolve output '\(p)': \(errnoText())") }
    if let cwd = realPath("."), cwd == ro || cwd.hasPrefix(ro == "/" ? "/" : ro + "/") {
      throw MoEError.invalid("output '\(p)' is \(cwd == ro ? "" : "a directory holding ")the current directory; refusing to replace it")
    }
    var st = stat(), up = stat()
    guard stat(p, &st) == 0, stat(parent, &up) == 0 else { throw MoEError.io("cannot stat output '\(p)': \(errnoText())") }
    if st.st_dev != up.st_dev || st.st_ino == up.st_ino {
      throw MoEError.invalid("output '\(p)' is a mount point; it cannot be renamed, so it cannot be replaced: choose a directory inside it")
    }
    // Never replace the input or a directory containing it.
    if let ri = realPath(input), ri == ro || ri.hasPrefix(ro + "/") {
      throw MoEError.invalid("output '\(p)' is or contains the input '\(input)'; refusing to replace it")
    }
  }

  /// `.NAME.tmp-`: the start of every temporary name of output `p`.
  static func temporaryPrefix(of p: String) -> String { ".\(FileSystem.baseName(of: p)).tmp-" }

  /// The writer's process id in a temporary name of output `p`
  /// (`.NAME.tmp-PID-RANDOM` or `.NAME.tmp-PID-RANDOM.old`), nil for other names.
  package static func writerProcess(ofTemporary name: String, output p: String) -> pid_t? {
    let prefix = temporaryPrefix(of: p)
    guard name.hasPrefix(prefix) else { return nil }
    var rest = Substring(name.dropFirst(prefix.count))
    if rest.hasSuffix(".old") { rest = rest.dropLast(4) }
    let parts = rest.split(separator: "-", omittingEmptySubsequences: false)
    guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCIIDigit) }),
          let pid = pid_t(parts[0]), pid > 0, UInt32(parts[1]) != nil else { return nil }
    return pid
  }

  /// Whether `name` is a temporary of output `p` whose writer no longer
  /// exists (kill(pid, 0) fails with ESRCH); those of live processes, this one
  /// included, are not.
  static func isStaleTemporary(_ name: String, of p: String) -> Bool {
    guard let pid = writerProcess(ofTemporary: name, output: p), pid != getpid() else { return false }
    return kill(pid, 0) != 0 && errno == ESRCH
  }

  /// A writer that replaced the output with two renames and died between them
  /// left no output and the previous tree at `.NAME.tmp-PID-RANDOM.old`: put
  /// that tree back, so the interruption loses nothing.
  static func restoreInterruptedReplacement(of p: String) {
    guard !FileSystem.exists(p), let names = try? FileSystem.listDirectory(FileSystem.parent(of: p)) else { return }
    for name in names where name.hasSuffix(".old") && isStaleTemporary(name, of: p) {
      let old = FileSystem.join(FileSystem.parent(of: p), name)
      if renameAt2(old, p, flags: renameNoReplace) == 0 { return }
      if !FileSystem.exists(p) && Glibc.rename(old, p) == 0 { return }
    }
  }

  /// Removes the temporaries of output `p` whose writer no longer exists;
  /// leaves everything when the parent cannot be listed.
  static func removeStaleTemporaries(of p: String) -> StaleTemporaries {
    let parent = FileSystem.parent(of: p)
    var removed = StaleTemporaries()
    guard let names = try? FileSystem.listDirectory(parent) else { return removed }
    for name in names where isStaleTemporary(name, of: p) {
      let stale = FileSystem.join(parent, name)
      removed.bytes += FileSystem.removeTree(stale)
      if !FileSystem.exists(stale) { removed.count += 1 }
    }
    return removed
  }

  package func commit() throws {
    syncDirectory(temporary)
    if force, FileSystem.exists(path) {
      if let what = FileSystem.entryKind(path), what != .directory {
        throw MoEError(.exists, "output '\(path)' became \(what) while writing; only a directory is replaced")
      }
      switch atomicExchange ? renameAt2(temporary, path, flags: renameExchange) : ENOSYS {
      case 0:
        // The old tree now has the temporary name: a crash while removing it
        // leaves a stale temporary that the next run removes.
        committed = true
        syncDirectory(FileSystem.parent(of: path))
        FileSystem.removeTree(temporary)
        return
      case EINVAL, ENOSYS:
        try replaceWithTwoRenames()
        return
      case ENOENT where !FileSystem.exists(path):
        break  // the old output went away meanwhile: a plain move below
      case EBUSY:
        throw MoEError.io("cannot replace '\(path)': it is in use (a mount point, or the working directory of a process on some systems): \(String(cString: strerror(EBUSY)))")
      case let code:
        throw MoEError.io("cannot swap the new output into '\(path)': \(String(cString: strerror(code)))")
      }
    }
    try moveIntoPlace()
  }

  /// The temporary to the output path, refusing to replace anything that
  /// appeared there meanwhile.
  private func moveIntoPlace() throws {
    var code = renameAt2(temporary, path, flags: renameNoReplace)
    if code == EINVAL || code == ENOSYS {
      // No RENAME_NOREPLACE here: check, then rename (a rename onto an empty directory would replace it).
      code = FileSystem.exists(path) ? EEXIST : Glibc.rename(temporary, path) == 0 ? 0 : errno
    }
    switch code {
    case 0:
      committed = true
      syncDirectory(FileSystem.parent(of: path))
    case EEXIST, ENOTEMPTY:
      throw MoEError(.exists, "output '\(path)' appeared while writing; refusing to replace it")
    default:
      throw MoEError.io("cannot rename '\(temporary)' to '\(path)': \(String(cString: strerror(code)))")
    }
  }

  /// Where the file system cannot exchange two directories: the old output
  /// moves aside, the new one moves in (a crash between the two leaves no
  /// output, only the two temporaries), then the old one is removed.
  private func replaceWithTwoRenames() throws {
    let old = temporary + ".old"
    try FileSystem.rename(path, old)
    do { try FileSystem.rename(temporary, path) } catch {
      try? FileSystem.rename(old, path)
      throw error
    }
    committed = true
    syncDirectory(FileSystem.parent(of: path))
    FileSystem.removeTree(old)
  }

  package func discard() {
    if !committed { FileSystem.removeTree(temporary) }
  }
}

/// renameat2's flags (linux/fs.h).
let renameNoReplace: UInt32 = 1
let renameExchange: UInt32 = 2

/// renameat2(2) from the C library, looked up at run time because the Glibc
/// module does not declare it; nil when the C library lacks it.
private let renameAt2Function: (@convention(c) (Int32, UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, UInt32) -> Int32)? = {
  guard let symbol = dlsym(nil, "renameat2") else { return nil }
  return unsafeBitCast(symbol, to: (@convention(c) (Int32, UnsafePointer<CChar>?, Int32, UnsafePointer<CChar>?, UInt32) -> Int32).self)
}()

/// renameat2(from, to, flags): 0, or the errno (ENOSYS when the C library has no renameat2).
func renameAt2(_ from: String, _ to: String, flags: UInt32) -> Int32 {
  guard let f = renameAt2Function else { return ENOSYS }
  return f(AT_FDCWD, from, AT_FDCWD, to, flags) == 0 ? 0 : errno
}

/// fsync of a directory, so renames and new entries in it are durable
/// (best effort: the files themselves were synced and checked when closed).
func syncDirectory(_ path: String) {
  let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
  guard fd >= 0 else { return }
  _ = fsync(fd)
  close(fd)
}

package func realPath(_ p: String) -> String? {
  guard let r = realpath(p, nil) else { return nil }
  defer { free(r) }
  return String(cString: r)
}
