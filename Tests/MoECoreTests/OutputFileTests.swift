import Testing
@testable import MoESupport

#if canImport(Glibc)
import Glibc
#endif

/// Output files hold exactly the bytes written, in every write pattern, with
/// O_DIRECT (whole blocks from the buffer, the tail through the page cache)
/// and with ordinary writes.
@Suite struct OutputFileTests {
  /// Pieces of every kind: empty, under a block, across block and buffer
  /// boundaries, larger than the buffer, from unaligned addresses.
  static let pieces = [0, 1, 4095, 4097, 3, 12 << 10, (8 << 20) + 5, 4096, 7, (3 << 20) + 11, 1, 0, 65_536]

  /// Pseudo-random bytes, enough for every total below (and one more).
  static let data: [UInt8] = {
    var x: UInt64 = 0x9E37_79B9_7F4A_7C15
    var out = [UInt8](repeating: 0, count: pieces.reduce(0, +) + 2 * 4096 + 1)
    out.withUnsafeMutableBytes { raw in
      for i in stride(from: 0, to: raw.count - 7, by: 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        raw.storeBytes(of: x, toByteOffset: i, as: UInt64.self)
      }
    }
    return out
  }()

  /// true when `dir` is on a file system known to take O_DIRECT (ext2/3/4,
  /// XFS, Btrfs), read from the longest mount point in /proc/mounts above it.
  static func takesDirectIO(_ dir: String) -> Bool {
    guard let mounts = try? FileSystem.readAll("/proc/mounts") else { return false }
    var best = (length: -1, type: "")
    for line in String(decoding: mounts, as: UTF8.self).split(separator: "\n") {
      let fields = line.split(separator: " ")
      guard fields.count >= 3 else { continue }
      let point = String(fields[1])
      let covers = point == "/" || dir == point || dir.hasPrefix(point + "/")
      if covers && point.count > best.length { best = (point.count, String(fields[2])) }
    }
    return ["ext2", "ext3", "ext4", "xfs", "btrfs"].contains(best.type)
  }

  func writeAndCheck(in dir: String, direct: Bool, tail: Int) throws {
    let path = FileSystem.join(dir, "out-\(direct)-\(tail).bin")
    let total = Self.pieces.reduce(0, +) + tail
    let data = Self.data
    let file = try OutputFile(path: path, direct: direct)
    let openedDirect = file.direct
    if !direct { #expect(!openedDirect) }
    if direct && Self.takesDirectIO(dir) { #expect(openedDirect, "O_DIRECT refused on \(dir)") }
    var offset = 0
    try data.withUnsafeBytes { raw in
      for n in Self.pieces + [tail] {
        // Start one byte in, so no piece after the first is page aligned.
        try file.write(UnsafeRawBufferPointer(rebasing: raw[(offset + 1)..<(offset + 1 + n)]))
        offset += n
      }
    }
    try file.flush()
    try file.close()
    #expect(file.bytesWritten == UInt64(total))
    if openedDirect {
      #expect(file.directBytes == UInt64(total & ~4095), "whole blocks go with O_DIRECT")
    } else {
      #expect(file.directBytes == 0)
    }
    let back = try MappedFile(path: path)
    withExtendedLifetime(back) {
      #expect(back.bytes.count == total)
      let same = data.withUnsafeBytes { memcmp($0.baseAddress! + 1, back.bytes.baseAddress!, total) == 0 }
      #expect(back.bytes.count != total || same, "the file's bytes differ from those written")
    }
    // The file is created exclusively: a second writer is refused.
    #expect(throws: MoEError.self) { _ = try OutputFile(path: path, direct: direct) }
  }

  @Test func bytesSurviveEveryWritePattern() throws {
    var dirs = ["/tmp/moecore-outfile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"]
    // tmpfs: without O_DIRECT on older kernels, so the ordinary path runs there.
    if FileSystem.isDirectory("/dev/shm") { dirs.append("/dev/shm/moecore-outfile-\(getpid())") }
    for dir in dirs {
      try FileSystem.makeDirectory(dir)
      defer { FileSystem.removeTree(dir) }
      for direct in [true, false] {
        // Totals that end on a block boundary, just past one, and just before one.
        let whole = Self.pieces.reduce(0, +)
        for tail in [(4096 - whole % 4096) % 4096, (4096 - whole % 4096) % 4096 + 1, (4096 - whole % 4096) % 4096 + 4095] {
          try writeAndCheck(in: dir, direct: direct, tail: tail)
        }
      }
    }
  }

  /// An empty file and a file of one byte.
  @Test func tinyFiles() throws {
    let dir = "/tmp/moecore-outfile-tiny-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileSystem.makeDirectory(dir)
    defer { FileSystem.removeTree(dir) }
    let empty = try OutputFile(path: FileSystem.join(dir, "empty"))
    try empty.close()
    #expect(try FileSystem.readAll(FileSystem.join(dir, "empty")).isEmpty)
    try FileSystem.writeText("x", to: FileSystem.join(dir, "one"))
    #expect(try FileSystem.readAll(FileSystem.join(dir, "one")) == [UInt8(ascii: "x")])
  }
}
