import MoESupport
import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif
import CMoeUpcycle

// The header's rules for versioned structs and output buffers, each kept by
// one helper that every export uses.

/// A C struct that starts with `size_t struct_size` and grows only by
/// appending fields, each at or after the previous version's sizeof.
protocol VersionedStruct {
  /// The C name, for messages.
  static var cName: String { get }
  /// Bytes of the struct's first version: where the first appended field
  /// starts (its sizeof when nothing was appended yet).
  static var firstVersionSize: Int { get }
}

/// A parameter struct: the values its `_init` function writes.
protocol ParameterStruct: VersionedStruct {
  static var defaults: Self { get }
}

/// Largest struct_size taken at face value (a caller built against a much
/// newer header, or garbage in the field).
private let maxStructSize = 1 << 16

extension VersionedStruct {
  /// This library's sizeof.
  static var ownSize: Int { MemoryLayout<Self>.size }

  /// Checks a caller's struct_size against the first version and a sane maximum.
  static func checkSize(_ size: Int, _ argument: String) throws {
    guard size >= firstVersionSize, size <= maxStructSize else {
      let range = firstVersionSize == ownSize ? "\(ownSize)" : "\(firstVersionSize) (its first version) to \(ownSize)"
      throw MoEError.invalid("\(argument)->struct_size is \(size); \(cName) is \(range) bytes in this library "
                             + "(version \(moeupcycleVersion)): set it to sizeof(\(cName))")
    }
  }
}

/// The struct_size field of caller memory.
private func structSize(_ p: UnsafeRawPointer) -> Int {
  p.loadUnaligned(as: Int.self)
}

/// A caller's parameter struct read over the defaults: fields beyond its
/// struct_size keep their defaults; bytes beyond this library's struct must
/// be zero. NULL gives the defaults.
func readParameters<T: ParameterStruct>(_ p: UnsafePointer<T>?, _ argument: String) throws -> T {
  var value = T.defaults
  guard let p else { return value }
  let raw = UnsafeRawPointer(p)
  let size = structSize(raw)
  try T.checkSize(size, argument)
  let own = T.ownSize
  if size > own {
    let extra = UnsafeRawBufferPointer(start: raw + own, count: size - own)
    if let i = extra.firstIndex(where: { $0 != 0 }) {
      throw MoEError.unsupported("\(argument) is a \(size)-byte \(T.cName) with byte \(own + i) set, beyond the "
                                 + "\(own) bytes this library (version \(moeupcycleVersion)) knows: it asks for "
                                 + "an option of a newer version")
    }
  }
  withUnsafeMutableBytes(of: &value) { dst in
    dst.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: min(size, own)))
    dst.storeBytes(of: own, as: Int.self)
  }
  return value
}

/// Fills caller memory of `size` bytes with the defaults (an `_init` function).
func initParameters<T: ParameterStruct>(_ p: UnsafeMutablePointer<T>?, _ size: Int, _ function: StaticString) -> moe_status {
  guarded(function) {
    guard let p else { throw MoEError(.nullPointer, "params is NULL") }
    try T.checkSize(size, "params")
    store(T.defaults, into: UnsafeMutableRawPointer(p), size: size)
  }
}

/// The caller's size of a result struct, checked before any work is done.
@discardableResult
func checkResult<T: VersionedStruct>(_ p: UnsafeMutablePointer<T>?, _ argument: String) throws -> Int {
  guard let p else { throw MoEError(.nullPointer, "\(argument) is NULL") }
  let size = structSize(UnsafeRawPointer(p))
  try T.checkSize(size, argument)
  return size
}

/// Writes a result struct into caller memory: only the caller's struct_size
/// bytes (zeros beyond this library's own struct), keeping its struct_size.
func writeResult<T: VersionedStruct>(_ value: T, to p: UnsafeMutablePointer<T>, _ argument: String) throws {
  let size = try checkResult(p, argument)
  store(value, into: UnsafeMutableRawPointer(p), size: size)
}

/// `value`'s bytes into `size` bytes at `dst`, zero-padded, with struct_size = size.
private func store<T>(_ value: T, into dst: UnsafeMutableRawPointer, size: Int) {
  var v = value
  withUnsafeBytes(of: &v) { src in
    let n = min(size, src.count)
    dst.copyMemory(from: src.baseAddress!, byteCount: n)
    if size > n { (dst + n).initializeMemory(as: UInt8.self, repeating: 0, count: size - n) }
  }
  dst.storeBytes(of: size, as: Int.self)
}

// MARK: - Output buffers

/// The output-buffer rule: `*needed` receives `count`; a NULL buffer with
/// capacity 0 only asks (nil is returned: write nothing); a capacity below
/// `count` is MOE_ERR_BUFFER_TOO_SMALL. Returns the buffer to fill.
func outputBuffer<E>(_ buffer: UnsafeMutablePointer<E>?, capacity: Int, needed: UnsafeMutablePointer<Int>?,
                     count: Int, _ what: String, unit: String) throws -> UnsafeMutablePointer<E>? {
  needed?.pointee = count
  // A size_t above Int.max arrives negative: as much as can be addressed.
  let capacity = capacity < 0 ? Int.max : capacity
  guard let buffer else {
    guard capacity == 0 else { throw MoEError(.nullPointer, "\(what) is NULL but capacity is \(capacity)") }
    return nil
  }
  guard capacity >= count else {
    throw MoEError(.bufferTooSmall, "\(what) holds \(capacity) \(unit) but \(count) are needed")
  }
  return buffer
}

/// `text` NUL-terminated into a caller buffer by the output-buffer rule.
func writeText(_ text: String, _ buffer: UnsafeMutablePointer<CChar>?, _ capacity: Int,
               _ needed: UnsafeMutablePointer<Int>?, _ what: String = "buffer") throws {
  let bytes = Array(text.utf8)
  guard let dst = try outputBuffer(buffer, capacity: capacity, needed: needed, count: bytes.count + 1, what,
                                   unit: "bytes") else { return }
  bytes.withUnsafeBytes { src in
    if !src.isEmpty { UnsafeMutableRawPointer(dst).copyMemory(from: src.baseAddress!, byteCount: src.count) }
  }
  dst[bytes.count] = 0
}

/// `values` into a caller buffer by the output-buffer rule.
func writeValues<E>(_ values: [E], _ buffer: UnsafeMutablePointer<E>?, _ capacity: Int,
                    _ needed: UnsafeMutablePointer<Int>?, _ what: String, unit: String) throws {
  guard let dst = try outputBuffer(buffer, capacity: capacity, needed: needed, count: values.count, what,
                                   unit: unit) else { return }
  for (i, v) in values.enumerated() { dst[i] = v }
}
