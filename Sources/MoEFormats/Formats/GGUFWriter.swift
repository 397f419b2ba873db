// Writing GGUF (version 3): the header, typed metadata, tensor infos and the
// tensor data, each tensor's data aligned to `general.alignment` (32).

import MoESupport

/// A metadata value with the GGUF type it is written as.
package enum GGUFOut {
  case u32(UInt32), i32(Int32), u64(UInt64), f32(Float), bool(Bool), string(String)
  case strings([String]), i32s([Int32]), f32s([Float])

  package static let alignment = 32

  /// GGUF value type ids.
  private var typeID: UInt32 {
    switch self {
    case .u32: return 4
    case .i32: return 5
    case .f32: return 6
    case .bool: return 7
    case .string: return 8
    case .strings, .i32s, .f32s: return 9
    case .u64: return 10
    }
  }

  /// The closest GGUF type of a value read from a GGUF file.
  package init?(_ v: GGUFValue) {
    switch v {
    case let .uint(x): self = x <= UInt64(UInt32.max) ? .u32(UInt32(x)) : .u64(x)
    case let .int(x): guard let i = Int32(exactly: x) else { return nil }; self = .i32(i)
    case let .float(x): self = .f32(Float(x))
    case let .bool(b): self = .bool(b)
    case let .string(s): self = .string(s)
    case let .array(items):
      if items.allSatisfy({ $0.stringValue != nil }) {
        self = .strings(items.compactMap(\.stringValue))
      } else if items.allSatisfy({ if case .float = $0 { return true }; return false }) {
        self = .f32s(items.compactMap { $0.doubleValue.map(Float.init) })
      } else {
        let ints = items.compactMap { $0.intValue.flatMap { Int32(exactly: $0) } }
        guard ints.count == items.count else { return nil }
        self = .i32s(ints)
      }
    }
  }

  package func append(to out: inout [UInt8]) {
    GGUFOut.put(typeID, &out)
    switch self {
    case let .u32(x): GGUFOut.put(x, &out)
    case let .i32(x): GGUFOut.put(UInt32(bitPattern: x), &out)
    case let .u64(x): GGUFOut.put(x, &out)
    case let .f32(x): GGUFOut.put(x.bitPattern, &out)
    case let .bool(b): out.append(b ? 1 : 0)
    case let .string(s): GGUFOut.put(s, &out)
    case let .strings(a):
      GGUFOut.put(UInt32(8), &out); GGUFOut.put(UInt64(a.count), &out)
      for s in a { GGUFOut.put(s, &out) }
    case let .i32s(a):
      GGUFOut.put(UInt32(5), &out); GGUFOut.put(UInt64(a.count), &out)
      for x in a { GGUFOut.put(UInt32(bitPattern: x), &out) }
    case let .f32s(a):
      GGUFOut.put(UInt32(6), &out); GGUFOut.put(UInt64(a.count), &out)
      for x in a { GGUFOut.put(x.bitPattern, &out) }
    }
  }

  static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
    withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
  }

  static func put(_ s: String, _ out: inout [UInt8]) {
    put(UInt64(s.utf8.count), &out)
    out.append(contentsOf: s.utf8)
  }

  /// The header (magic, counts, metadata, tensor infos), padded to the
  /// alignment; tensors are laid out in order, each at an aligned offset.
  package static func header(metadata: [(String, GGUFOut)], tensors: [(name: String, dims: [Int], dtype: DType, bytes: Int)]) -> [UInt8] {
    var out: [UInt8] = []
    put(UInt32(0x4655_4747), &out)
    put(UInt32(3), &out)
    put(UInt64(tensors.count), &out)
    put(UInt64(metadata.count), &out)
    for (key, value) in metadata {
      put(key, &out)
      value.append(to: &out)
    }
    var offset = 0
    for t in tensors {
      put(t.name, &out)
      put(UInt32(t.dims.count), &out)
      for d in t.dims { put(UInt64(d), &out) }
      put(t.dtype.ggmlType, &out)
      put(UInt64(offset), &out)
      offset = padded(offset + t.bytes)
    }
    while out.count % alignment != 0 { out.append(0) }
    return out
  }

  package static func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }
}
