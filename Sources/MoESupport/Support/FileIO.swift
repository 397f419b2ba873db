#if canImport(Glibc)
import Glibc
#endif

/// Text of the current `errno`.
package func errnoText() -> String { String(cString: strerror(errno)) }

/// A read-only memory map of a whole file. The mapping lives as long as the object.
/// `init(copying:path:)` holds bytes from memory instead, for readers fed from memory.
public final class MappedFile: @unchecked Sendable {
  public let path: String
  public let bytes: UnsafeRawBufferPointer
  private let base: UnsafeMutableRawPointer?
  /// true when `base` is an mmap (unmapped and madvised), false for an owned copy.
  public let isMapping: Bool

  public init(path: String) throws {
    self.path = path
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      let code = errno
      let kind: MoEErrorKind = code == ENOENT ? .notFound : .io
      throw MoEError(kind, "cannot open '\(path)': \(String(cString: strerror(code)))")
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw MoEError.io("cannot stat '\(path)': \(errnoText())") }
    guard (st.st_mode & S_IFMT) == S_IFREG else {
      throw MoEError.io("'\(path)' is not a regular file")
    }
    let size = Int(st.st_size)
    isMapping = true
    if size == 0 {
      base = nil
      bytes = UnsafeRawBufferPointer(start: nil, count: 0)
      return
    }
    let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
    guard let p, p != MAP_FAILED else { throw MoEError.io("cannot map '\(path)': \(errnoText())") }
    base = p
    bytes = UnsafeRawBufferPointer(start: p, count: size)
  }

  /// A copy of `data` (exactly its size) that stands for a file named `path` in messages.
  public init(copying data: UnsafeRawBufferPointer, path: String) {
    self.path = path
    isMapping = false
    let p = UnsafeMutableRawPointer.allocate(byteCount: max(1, data.count), alignment: 16)
    if let src = data.baseAddress, data.count > 0 { p.copyMemory(from: src, byteCount: data.count) }
    base = p
    bytes = UnsafeRawBufferPointer(start: p, count: data.count)
  }

  /// Tells the kernel a range will not be needed soon (keeps RSS bounded while streaming).
  public func release(offset: Int, count: Int) {
    guard isMapping, let base, count > 0 else { return }
    let page = Int(getpagesize())
    let start = (offset / page) * page
    let end = min(bytes.count, offset + count)
    guard end > start else { return }
    madvise(base + start, end - start, MADV_DONTNEED)
  }

  deinit {
    guard let base else { return }
    if isMapping { munmap(base, bytes.count) } else { base.deallocate() }
  }
}

/// File-system helpers used by readers and writers.
public enum FileSystem {
  public static func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
  }

  public static func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
  }

  public static func isRegularFile(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
  }

  public static func join(_ a: String, _ b: String) -> String {
    a.hasSuffix("/") ? a + b : a + "/" + b
  }

  public static func parent(of path: String) -> String {
    var p = path
    while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
    guard let i = p.lastIndex(of: "/") else { return "." }
    if i == p.startIndex { return "/" }
    return String(p[..<i])
  }

  public static func baseName(of path: String) -> String {
    var p = path
    while p.count > 1 && p.hasSuffix("/") { p.removeLast() }
    guard let i = p.lastIndex(of: "/") else { return p }
    return String(p[p.index(after: i)...])
  }

  /// Reads a whole (small) file; refuses files over `limit` bytes.
  public static func readAll(_ path: String, limit: Int = 256 << 20) throws -> [UInt8] {
    let f = try MappedFile(path: path)
    guard f.bytes.count <= limit else { throw MoEError.format("'\(path)' is larger than \(limit) bytes") }
    // The mapping must outlive the copy: `bytes` does not keep `f` alive.
    return withExtendedLifetime(f) { Array(f.bytes) }
  }

  public static func makeDirectory(_ path: String) throws {
    guard mkdir(path, 0o755) == 0 else {
      let code = errno
      throw MoEError(code == EEXIST ? .exists : .io, "cannot create directory '\(path)': \(String(cString: strerror(code)))")
    }
  }

  /// Creates `path` and any missing parents (an existing directory is fine).
  public static func makeDirectories(_ path: String) throws {
    if isDirectory(path) { return }
    let up = parent(of: path)
    if up != path && up != "." && up != "/" { try makeDirectories(up) }
    guard mkdir(path, 0o755) == 0 || (errno == EEXIST && isDirectory(path)) else {
      throw MoEError.io("cannot create directory '\(path)': \(errnoText())")
    }
  }

  /// Writes `text` under a temporary name beside `path`, then renames it into
  /// place (replacing an existing file): readers see the old or the new file.
  public static func replaceText(_ text: String, at path: String) throws {
    try writeAtomically(path) { file in
      var t = text
      try t.withUTF8 { try file.write(UnsafeRawBufferPointer($0)) }
    }
  }

  /// Writes a file through `write` under a temporary name beside `path`, then
  /// renames it into place (replacing an existing file): readers see the old or
  /// the new file, and the temporary is removed on any error. Returns the bytes written.
  @discardableResult
  public static func writeAtomically(_ path: String, _ write: (OutputFile) throws -> Void) throws -> UInt64 {
    let temporary = join(parent(of: path), ".\(baseName(of: path)).tmp-\(getpid())")
    _ = removeTree(temporary)
    do {
      let file = try OutputFile(path: temporary)
      try write(file)
      try file.close()
      try rename(temporary, path)
      return file.bytesWritten
    } catch {
      _ = removeTree(temporary)
      throw error
    }
  }

  /// Refuses an existing `path` (`what` names it) unless `force`, and anything
  /// there that is not a regular file.
  public static func checkReplaceable(_ path: String, force: Bool, what: String) throws {
    guard exists(path) else { return }
    guard force else { throw MoEError(.exists, "\(what) '\(path)' exists; pass force to replace it") }
    guard isRegularFile(path) else { throw MoEError(.exists, "'\(path)' exists and is not a regular file") }
  }

  public static func listDirectory(_ path: String) throws -> [String] {
    guard let dir = opendir(path) else { throw MoEError.io("cannot list '\(path)': \(errnoText())") }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafePointer(to: entry.pointee.d_name) {
        $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
      }
      if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
  }

  /// Removes a file or a directory tree (no symlinks followed); returns the
  /// disk space (allocated blocks) of what it removed.
  @discardableResult
  public static func removeTree(_ path: String) -> UInt64 {
    var st = stat()
    guard lstat(path, &st) == 0 else { return 0 }
    var freed: UInt64 = 0
    if (st.st_mode & S_IFMT) == S_IFDIR {
      if let names = try? listDirectory(path) {
        for n in names { freed += removeTree(join(path, n)) }
      }
      if rmdir(path) == 0 { freed += UInt64(max(0, st.st_blocks)) * 512 }
    } else if unlink(path) == 0 {
      freed += UInt64(max(0, st.st_blocks)) * 512
    }
    return freed
  }

  /// What is at a path.
  public enum EntryKind: Sendable, Equatable, CustomStringConvertible {
    case directory, regularFile, symbolicLink, fifo, socket, characterDevice, blockDevice, other

    /// In words, with an article: "a directory", "a symbolic link", ...
    public var description: String {
      switch self {
      case .directory: return "a directory"
      case .regularFile: return "a regular file"
      case .symbolicLink: return "a symbolic link"
      case .fifo: return "a FIFO"
      case .socket: return "a socket"
      case .characterDevice: return "a character device"
      case .blockDevice: return "a block device"
      case .other: return "a special file"
      }
    }
  }

  /// What is at `path`, without following a final symlink; nil when nothing is.
  public static func entryKind(_ path: String) -> EntryKind? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    switch st.st_mode & S_IFMT {
    case S_IFDIR: return .directory
    case S_IFREG: return .regularFile
    case S_IFLNK: return .symbolicLink
    case S_IFIFO: return .fifo
    case S_IFSOCK: return .socket
    case S_IFCHR: return .characterDevice
    case S_IFBLK: return .blockDevice
    default: return .other
    }
  }

  /// Refuses to start writing `bytes` into `directory` (for `what`) when its
  /// file system reports less free space than that, before anything large is written.
  /// File systems that report no size (0 blocks) are not checked.
  public static func checkFreeSpace(_ bytes: UInt64, in directory: String, for what: String) throws {
    var fs = statvfs()
    guard statvfs(directory, &fs) == 0, fs.f_blocks > 0 else { return }
    let free = UInt64(fs.f_bavail) &* UInt64(fs.f_frsize)
    guard bytes <= free else {
      throw MoEError.io("'\(what)' needs \(bytes) bytes but its file system has \(free) bytes free: \(String(cString: strerror(ENOSPC)))")
    }
  }

  public static func rename(_ from: String, _ to: String) throws {
    guard Glibc.rename(from, to) == 0 else {
      throw MoEError.io("cannot rename '\(from)' to '\(to)': \(errnoText())")
    }
  }

  /// Copies a small file byte for byte.
  public static func copyFile(_ from: String, _ to: String) throws {
    let data = try readAll(from)
    let out = try OutputFile(path: to)
    try data.withUnsafeBytes { try out.write($0) }
    try out.close()
  }

  public static func writeText(_ text: String, to path: String) throws {
    let out = try OutputFile(path: path)
    var t = text
    try t.withUTF8 { try out.write(UnsafeRawBufferPointer($0)) }
    try out.close()
  }
}

/// O_DIRECT, which Glibc's Swift module does not expose (its value differs by architecture).
#if arch(x86_64) || arch(i386)
private let directIOFlag: Int32 = 0o40000
#elseif arch(arm64) || arch(arm)
private let directIOFlag: Int32 = 0o200000
#else
private let directIOFlag: Int32 = 0
#endif

/// A file opened for writing (created exclusively), with a write buffer.
///
/// Where the file system allows it the file is written with O_DIRECT: whole
/// 4 KiB blocks go from the buffer to the device without passing through the
/// page cache, and only the final partial block is written through it. A
/// multi-GB checkpoint then costs no page-cache memory (it evicts nothing the
/// machine had cached), and on virtual machines, where every page the guest
/// touches for the first time is slow to back, writing it is many times
/// faster. File systems without O_DIRECT (tmpfs) get ordinary writes.
public final class OutputFile {
  public let path: String
  private var fd: Int32
  private var buffer: UnsafeMutableRawPointer
  private let capacity = 8 << 20
  /// The unit of O_DIRECT writes: offsets, lengths and the buffer's address
  /// are multiples of it (a page covers every device's logical block).
  private static let directBlock = 4096
  private var used = 0
  /// true while the descriptor has O_DIRECT set.
  public private(set) var direct: Bool
  public private(set) var bytesWritten: UInt64 = 0
  /// Bytes that went to the file with O_DIRECT.
  public private(set) var directBytes: UInt64 = 0

  /// `direct: false` asks for ordinary (page-cache) writes.
  public init(path: String, direct wantDirect: Bool = true) throws {
    self.path = path
    let flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC
    var opened: Int32 = -1
    var isDirect = false
    if wantDirect && directIOFlag != 0 {
      opened = open(path, flags | directIOFlag, 0o644)
      isDirect = opened >= 0
      // File systems without O_DIRECT refuse it with EINVAL before creating the file.
      if opened < 0 && errno != EINVAL {
        throw MoEError.io("cannot create '\(path)': \(errnoText())")
      }
    }
    if opened < 0 { opened = open(path, flags, 0o644) }
    guard opened >= 0 else { throw MoEError.io("cannot create '\(path)': \(errnoText())") }
    fd = opened
    direct = isDirect
    buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: Self.directBlock)
  }

  deinit {
    buffer.deallocate()
    if fd >= 0 { Glibc.close(fd) }
  }

  private func writeFully(_ p: UnsafeRawPointer, _ count: Int) throws {
    var done = 0
    while done < count {
      let n = Glibc.write(fd, p + done, count - done)
      if n < 0 {
        if errno == EINTR { continue }
        // A file system that accepted O_DIRECT at open may still refuse a
        // transfer: go on with ordinary writes from here.
        if errno == EINVAL && direct { try stopDirect(); continue }
        throw MoEError.io("cannot write '\(path)': \(errnoText())")
      }
      done += n
      if direct { directBytes += UInt64(n) }
    }
  }

  private func stopDirect() throws {
    guard direct else { return }
    let flags = fcntl(fd, F_GETFL)
    guard flags >= 0, fcntl(fd, F_SETFL, flags & ~directIOFlag) == 0 else {
      throw MoEError.io("cannot write '\(path)': \(errnoText())")
    }
    direct = false
  }

  /// Writes out the buffer; with O_DIRECT, its whole blocks (the rest, less
  /// than a block, stays buffered until more data or `close`).
  public func flush() throws {
    guard used > 0 else { return }
    let out = direct ? used & ~(Self.directBlock - 1) : used
    guard out > 0 else { return }
    try writeFully(buffer, out)
    if out < used { buffer.copyMemory(from: buffer + out, byteCount: used - out) }
    used -= out
  }

  public func write(_ data: UnsafeRawBufferPointer) throws {
    guard let base = data.baseAddress, data.count > 0 else { return }
    bytesWritten += UInt64(data.count)
    if !direct && data.count >= capacity {
      try flush()
      try writeFully(base, data.count)
      return
    }
    // O_DIRECT needs aligned memory, so every byte passes through the buffer.
    var done = 0
    while done < data.count {
      if used == capacity { try flush() }
      let n = min(capacity - used, data.count - done)
      (buffer + used).copyMemory(from: base + done, byteCount: n)
      used += n
      done += n
    }
  }

  public func write(_ bytes: [UInt8]) throws {
    try bytes.withUnsafeBytes { try write($0) }
  }

  /// Flushes, syncs and closes; errors (e.g. disk full) surface here.
  public func close() throws {
    guard fd >= 0 else { return }
    try flush()
    if used > 0 {
      // The final partial block: O_DIRECT cannot write it.
      try stopDirect()
      try flush()
    }
    let syncResult = fsync(fd)
    let code = errno
    let closeResult = Glibc.close(fd)
    fd = -1
    guard syncResult == 0 else { throw MoEError.io("cannot sync '\(path)': \(String(cString: strerror(code)))") }
    guard closeResult == 0 else { throw MoEError.io("cannot close '\(path)': \(errnoText())") }
  }
}

/// Physical memory of the machine in bytes; 0 when unknown.
public func physicalMemoryBytes() -> UInt64 {
  let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
  guard pages > 0, size > 0 else { return 0 }
  return UInt64(pages).multipliedReportingOverflow(by: UInt64(size)).partialValue
}

/// Peak resident set size of this process, in bytes.
public func peakResidentBytes() -> UInt64 {
  var usage = rusage()
  getrusage(RUSAGE_SELF.rawValue, &usage)
  return UInt64(max(0, usage.ru_maxrss)) * 1024
}

/// Monotonic seconds.
public func monotonicSeconds() -> Double {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
