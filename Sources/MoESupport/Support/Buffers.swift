// Float buffers for kernels: 64-byte aligned, uninitialized, allocation
// failure reported as an error instead of a trap.

#if canImport(Glibc)
import Glibc
#endif

public final class AlignedBuffer: @unchecked Sendable {
  public let pointer: UnsafeMutablePointer<Float>
  public let floats: Int
  /// The chunk this buffer was carved from (nil: the buffer owns its memory).
  private let chunk: AlignedBuffer?

  /// An owned buffer. Buffers of at least hugeAllocationBytes start on a huge
  /// page boundary, cover whole huge pages and are advised to use them.
  public init(floats: Int, what: String) throws {
    guard floats >= 0 else { throw MoEError.invalid("\(what): negative size \(floats)") }
    let (bytes, overflow) = max(floats, 16).multipliedReportingOverflow(by: 4)
    guard !overflow, bytes <= Int.max - hugePageBytes else {
      throw MoEError(.outOfMemory, "\(what): \(floats) floats overflow the address space")
    }
    guard let raw = allocateBlock(bytes: bytes, alignment: 64).pointer else {
      throw MoEError(.outOfMemory, "\(what): cannot allocate \(bytes) bytes")
    }
    pointer = raw.bindMemory(to: Float.self, capacity: max(floats, 16))
    self.floats = floats
    chunk = nil
  }

  /// floats at `offset` of `chunk`, which the new buffer keeps alive.
  fileprivate init(in chunk: AlignedBuffer, offset: Int, floats: Int) {
    pointer = chunk.pointer + offset
    self.floats = floats
    self.chunk = chunk
  }

  deinit { if chunk == nil { free(pointer) } }
}

/// n rounded up to a multiple of 16 (floats: one 64-byte vector, a cache line).
@inlinable @inline(always) package func roundUp16(_ n: Int) -> Int { (n + 15) & ~15 }

/// The size of a transparent huge page on x86-64.
package let hugePageBytes = 2 << 20
/// Owned buffers at least this large are backed by huge pages.
package let hugeAllocationBytes = 4 << 20

/// posix_memalign of `bytes` on an `alignment` boundary; a block of at least
/// hugeAllocationBytes (that can be rounded up) instead starts on a huge page,
/// covers whole huge pages and is advised to use them.
/// Returns the block (nil on failure, with posix_memalign's code) and its
/// length, for free().
package func allocateBlock(bytes: Int, alignment: Int) -> (pointer: UnsafeMutableRawPointer?, length: Int, rc: Int32) {
  let huge = bytes >= hugeAllocationBytes && bytes <= Int.max - hugePageBytes
  let length = huge ? (bytes + hugePageBytes - 1) & ~(hugePageBytes - 1) : bytes
  var raw: UnsafeMutableRawPointer?
  let rc = posix_memalign(&raw, huge ? hugePageBytes : alignment, length)
  guard rc == 0, let raw else { return (nil, length, rc) }
  if huge { adviseHugePages(raw, length) }
  return (raw, length, 0)
}

/// Asks the kernel to back the whole huge pages inside [base, base + bytes)
/// with transparent huge pages (THP in `madvise` mode, as on Debian) before the
/// memory is first touched. Decode streams every weight once per token: with
/// 4 KiB pages each 4 KiB read takes a TLB miss, and under a hypervisor each
/// miss walks two page tables. Advice only: without THP nothing changes.
package func adviseHugePages(_ base: UnsafeMutableRawPointer, _ bytes: Int) {
  let start = (Int(bitPattern: base) + hugePageBytes - 1) & ~(hugePageBytes - 1)
  let end = (Int(bitPattern: base) + bytes) & ~(hugePageBytes - 1)
  guard end > start, let p = UnsafeMutableRawPointer(bitPattern: start) else { return }
  _ = madvise(p, end - start, MADV_HUGEPAGE)
}

/// Carves a model's weight matrices out of large huge-page-backed chunks, so
/// that weights of a few MiB each (a layer's projections) are read through
/// huge pages without rounding every one up to whole huge pages. Slices start
/// on 64-byte boundaries; a chunk is freed when its last slice is.
package final class WeightArena {
  package static let chunkFloats = (32 << 20) / 4
  private var chunk: AlignedBuffer?
  private var used = 0
  private let touch: ((UnsafeMutablePointer<Float>, Int) -> Void)?

  /// `touch(pointer, floats)`, when given, writes each buffer before it is
  /// handed out (zeroing it on several threads takes the page faults of its
  /// first write in parallel).
  package init(touch: ((UnsafeMutablePointer<Float>, Int) -> Void)? = nil) { self.touch = touch }

  /// A buffer of `floats` floats (contents undefined).
  package func allocate(floats: Int, what: String) throws -> AlignedBuffer {
    guard floats >= 0 else { throw MoEError.invalid("\(what): negative size \(floats)") }
    let rounded = roundUp16(max(floats, 16))
    guard rounded <= Self.chunkFloats / 4 else {
      let b = try AlignedBuffer(floats: floats, what: what)
      touch?(b.pointer, floats)
      return b
    }
    if chunk == nil || used + rounded > Self.chunkFloats {
      chunk = try AlignedBuffer(floats: Self.chunkFloats, what: what)
      used = 0
    }
    let b = AlignedBuffer(in: chunk!, offset: used, floats: floats)
    touch?(b.pointer, floats)
    used += rounded
    return b
  }
}

/// Named grow-only scratch buffers, reused across calls.
package final class ScratchSet {
  private var buffers: [String: AlignedBuffer] = [:]

  package init() {}

  /// A buffer of at least `floats` floats; contents are unspecified.
  package func get(_ name: String, floats: Int) throws -> UnsafeMutablePointer<Float> {
    if let b = buffers[name], b.floats >= floats { return b.pointer }
    buffers[name] = nil
    let b = try AlignedBuffer(floats: floats, what: "scratch \(name)")
    buffers[name] = b
    return b.pointer
  }

  package func release() { buffers.removeAll() }

  /// Bytes held by the buffers whose names pass `include`.
  package func bytes(where include: (String) -> Bool = { _ in true }) -> Int {
    buffers.reduce(0) { $0 + (include($1.key) ? $1.value.floats * 4 : 0) }
  }
}
