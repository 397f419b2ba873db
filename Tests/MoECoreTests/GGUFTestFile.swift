@testable import MoESupport
@testable import MoEFormats

/// The bytes of a GGUF v3 file with `metadata` and f32 `tensors` (name, HF
/// shape [rows, cols], values); GGUF stores dimensions reversed and aligns
/// tensor data to 32 bytes.
func ggufBytes(metadata: [(String, GGUFValue)], tensors: [(String, [Int], [Float])] = []) -> [UInt8] {
  var out: [UInt8] = []
  func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
  func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
  func string(_ s: String) { u64(UInt64(s.utf8.count)); out += Array(s.utf8) }
  func typeCode(_ v: GGUFValue) -> UInt32 {
    switch v {
    case .uint: return 4
    case .int: return 5
    case .float: return 6
    case .bool: return 7
    case .string: return 8
    case .array: return 9
    }
  }
  func value(_ v: GGUFValue) {
    switch v {
    case let .uint(x): u32(UInt32(truncatingIfNeeded: x))
    case let .int(x): u32(UInt32(bitPattern: Int32(truncatingIfNeeded: x)))
    case let .float(x): u32(Float(x).bitPattern)
    case let .bool(b): out.append(b ? 1 : 0)
    case let .string(s): string(s)
    case let .array(items):
      u32(items.first.map(typeCode) ?? 8)
      u64(UInt64(items.count))
      for item in items { value(item) }
    }
  }
  u32(0x4655_4747)
  u32(3)
  u64(UInt64(tensors.count))
  u64(UInt64(metadata.count))
  for (key, v) in metadata { string(key); u32(typeCode(v)); value(v) }
  var offset = 0
  for (name, shape, _) in tensors {
    string(name)
    u32(UInt32(shape.count))
    for d in shape.reversed() { u64(UInt64(d)) }
    u32(0)  // F32
    u64(UInt64(offset))
    offset += (shape.reduce(1, *) * 4 + 31) / 32 * 32
  }
  if !tensors.isEmpty {
    while out.count % 32 != 0 { out.append(0) }
    for (_, _, values) in tensors {
      var padded = values
      while padded.count % 8 != 0 { padded.append(0) }
      padded.withUnsafeBytes { out += $0 }
    }
  }
  return out
}

/// Writes ggufBytes(...) to `path`.
func writeGGUFFile(_ path: String, metadata: [(String, GGUFValue)], tensors: [(String, [Int], [Float])] = []) throws {
  let file = try OutputFile(path: path)
  try file.write(ggufBytes(metadata: metadata, tensors: tensors))
  try file.close()
}
