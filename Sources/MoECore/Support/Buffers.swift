// Float buffers for kernels: 64-byte aligned, uninitialized, allocation
// failure reported as an error instead of a trap.

#if canImport(Glibc)
import Glibc
#endif

public final class AlignedBuffer: @unchecked Sendable {
  public let pointer: UnsafeMutablePointer<Float>
  public let floats: Int

  public init(floats: Int, what: String) throws {
    guard floats >= 0 else { throw MoEError.invalid("\(what): negative size \(floats)") }
    let (bytes, overflow) = max(floats, 16).multipliedReportingOverflow(by: 4)
    guard !overflow else { throw MoEError(.outOfMemory, "\(what): \(floats) floats overflow the address space") }
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
      throw MoEError(.outOfMemory, "\(what): cannot allocate \(bytes) bytes")
    }
    pointer = raw.bindMemory(to: Float.self, capacity: max(floats, 16))
    self.floats = floats
  }

  deinit { free(pointer) }
}

/// Named grow-only scratch buffers, reused across calls.
final class ScratchSet {
  private var buffers: [String: AlignedBuffer] = [:]

  /// A buffer of at least `floats` floats; contents are unspecified.
  func get(_ name: String, floats: Int) throws -> UnsafeMutablePointer<Float> {
    if let b = buffers[name], b.floats >= floats { return b.pointer }
    buffers[name] = nil
    let b = try AlignedBuffer(floats: floats, what: "scratch \(name)")
    buffers[name] = b
    return b.pointer
  }

  func release() { buffers.removeAll() }

  /// Bytes held by the buffers whose names pass `include`.
  func bytes(where include: (String) -> Bool = { _ in true }) -> Int {
    buffers.reduce(0) { $0 + (include($1.key) ? $1.value.floats * 4 : 0) }
  }
}
