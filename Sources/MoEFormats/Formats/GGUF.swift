import MoESupport

/// A GGUF metadata value.
public enum GGUFValue: Sendable {
  case uint(UInt64)
  case int(Int64)
  case float(Double)
  case bool(Bool)
  case string(String)
  case array([GGUFValue])

  public var intValue: Int? {
    switch self {
    case let .uint(v): return v <= UInt64(Int.max) ? Int(v) : nil
    case let .int(v): return Int(v)
    default: return nil
    }
  }
  public var doubleValue: Double? {
    switch self {
    case let .float(v): return v
    case let .uint(v): return Double(v)
    case let .int(v): return Double(v)
    default: return nil
    }
  }
  public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
  public var boolValue: Bool? { if case let .bool(b) = self { return b }; return nil }
  public var arrayValue: [GGUFValue]? { if case let .array(a) = self { return a }; return nil }

  /// An f32 as the Double of its shortest decimal that reads back to the same
  /// f32 (1e-05, not 9.999999747378752e-06), so configs built from GGUF metadata
  /// carry the value the model was made with; reading it as f32 gives the same bits.
  package static func shortestDecimal(_ f: Float) -> Double {
    guard f.isFinite, let d = Double(f.description), Float(d) == f else { return Double(f) }
    return d
  }
}

/// Bounds-checked little-endian reader over a byte buffer.
package struct ByteCursor {
  package let bytes: UnsafeRawBufferPointer
  package var pos: Int
  package let what: String

  package mutating func need(_ n: Int) throws {
    guard n >= 0, pos <= bytes.count - n else {
      throw MoEError.format("\(what): truncated at byte \(pos) (needed \(n) more bytes, file has \(bytes.count))")
    }
  }
  package mutating func u8() throws -> UInt8 { try need(1); defer { pos += 1 }; return bytes[pos] }
  package mutating func u16() throws -> UInt16 {
    try need(2); defer { pos += 2 }
    return UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: UInt16.self))
  }
  package mutating func u32() throws -> UInt32 {
    try need(4); defer { pos += 4 }
    return UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: UInt32.self))
  }
  package mutating func u64() throws -> UInt64 {
    try need(8); defer { pos += 8 }
    return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: UInt64.self))
  }
  package mutating func string() throws -> String {
    let n = try u64()
    guard n <= UInt64(bytes.count - pos) else {
      throw MoEError.format("\(what): string length \(n) at byte \(pos - 8) runs past the end of the file")
    }
    let len = Int(n)
    let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[pos..<(pos + len)]), as: UTF8.self)
    pos += len
    return s
  }
}

/// A GGUF file (versions 2 and 3): metadata, tensor infos and the data section.
public final class GGUFFile {
  public struct Tensor: Sendable {
    public var name: String
    /// GGUF dims (ne0 first: the fastest-varying dimension).
    public var dims: [Int]
    public var dtype: DType
    public var offset: Int
    public var elementCount: Int
    public var byteCount: Int
  }

  public let path: String
  public let file: MappedFile
  public let version: UInt32
  public private(set) var metadata: [(String, GGUFValue)] = []
  public private(set) var tensors: [Tensor] = []
  public let dataStart: Int
  public let alignment: Int

  public convenience init(path: String) throws {
    try self.init(file: try MappedFile(path: path))
  }

  /// Parses a mapped file (or bytes held in memory, see `MappedFile(copying:path:)`).
  public init(file: MappedFile) throws {
    path = file.path
    self.file = file
    let what = "'\(path)'"
    var c = ByteCursor(bytes: file.bytes, pos: 0, what: what)
    guard file.bytes.count >= 4 else { throw MoEError.format("\(what): file is too short to be GGUF") }
    let magic = try c.u32()
    guard magic == 0x4655_4747 else { throw MoEError.format("\(what): not a GGUF file (bad magic)") }
    version = try c.u32()
    guard version == 2 || version == 3 else {
      throw MoEError.unsupported("\(what): GGUF version \(version) is not supported (2 or 3)")
    }
    let tensorCount = try c.u64()
    let kvCount = try c.u64()
    // Every tensor info and KV pair takes at least 8 bytes: reject absurd counts early.
    let remaining = UInt64(file.bytes.count - c.pos)
    guard tensorCount <= remaining / 8, kvCount <= remaining / 8 else {
      throw MoEError.format("\(what): tensor count \(tensorCount) / metadata count \(kvCount) is impossible for a \(file.bytes.count)-byte file")
    }
    for _ in 0..<kvCount {
      let key = try c.string()
      let type = try c.u32()
      metadata.append((key, try GGUFFile.readValue(&c, type: type, depth: 0)))
    }
    var align = 32
    if let a = metadata.first(where: { $0.0 == "general.alignment" })?.1.intValue {
      guard a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
        throw MoEError.format("\(what): general.alignment \(a) is not a power of two")
      }
      align = a
    }
    alignment = align
    var infos: [Tensor] = []
    for _ in 0..<tensorCount {
      let name = try c.string()
      let nDims = try c.u32()
      guard nDims >= 1 && nDims <= 4 else { throw MoEError.format("\(what): tensor '\(name)' has \(nDims) dimensions") }
      var dims: [Int] = []
      for _ in 0..<nDims {
        let d = try c.u64()
        guard d <= UInt64(1 << 40) else { throw MoEError.format("\(what): tensor '\(name)' has an absurd dimension \(d)") }
        dims.append(Int(d))
      }
      let type = try c.u32()
      guard let dtype = DType(ggmlType: type) else {
        throw MoEError.unsupported("\(what): tensor '\(name)' has GGML type \(type); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")
      }
      let offset = try c.u64()
      let count = try checkedProduct(dims, what: "\(what): tensor '\(name)'")
      guard dims[0] % dtype.blockElements == 0 else {
        throw MoEError.format("\(what): tensor '\(name)' row length \(dims[0]) is not a multiple of the \(dtype.name) block size")
      }
      let bytes = try dtype.byteCount(elements: count, what: "\(what): tensor '\(name)'")
      guard offset <= UInt64(Int.max) else { throw MoEError.format("\(what): tensor '\(name)' offset overflows") }
      infos.append(Tensor(name: name, dims: dims, dtype: dtype, offset: Int(offset), elementCount: count, byteCount: bytes))
    }
    let start = (c.pos + align - 1) / align * align
    dataStart = start
    let dataSize = file.bytes.count - start
    guard dataSize >= 0 || infos.isEmpty else { throw MoEError.format("\(what): truncated before the tensor data") }
    var seen = Set<String>()
    for t in infos {
      guard seen.insert(t.name).inserted else { throw MoEError.format("\(what): tensor '\(t.name)' appears twice") }
      guard t.offset % align == 0 else {
        throw MoEError.format("\(what): tensor '\(t.name)' offset \(t.offset) is not aligned to \(align)")
      }
      guard t.offset <= dataSize, t.byteCount <= dataSize - t.offset else {
        throw MoEError.format("\(what): tensor '\(t.name)' data [\(t.offset), \(t.offset + t.byteCount)) runs past the end of the file (data section is \(max(0, dataSize)) bytes): truncated?")
      }
    }
    tensors = infos
  }

  private static func readValue(_ c: inout ByteCursor, type: UInt32, depth: Int) throws -> GGUFValue {
    switch type {
    case 0: return .uint(UInt64(try c.u8()))
    case 1: return .int(Int64(Int8(bitPattern: try c.u8())))
    case 2: return .uint(UInt64(try c.u16()))
    case 3: return .int(Int64(Int16(bitPattern: try c.u16())))
    case 4: return .uint(UInt64(try c.u32()))
    case 5: return .int(Int64(Int32(bitPattern: try c.u32())))
    case 6: return .float(GGUFValue.shortestDecimal(Float(bitPattern: try c.u32())))
    case 7: return .bool(try c.u8() != 0)
    case 8: return .string(try c.string())
    case 9:
      guard depth < 4 else { throw MoEError.format("\(c.what): metadata arrays nested too deeply") }
      let elementType = try c.u32()
      let count = try c.u64()
      guard count <= UInt64(c.bytes.count - c.pos) else {
        throw MoEError.format("\(c.what): metadata array of \(count) elements runs past the end of the file")
      }
      var items: [GGUFValue] = []
      items.reserveCapacity(Int(count))
      for _ in 0..<count { items.append(try readValue(&c, type: elementType, depth: depth + 1)) }
      return .array(items)
    case 10: return .uint(try c.u64())
    case 11: return .int(Int64(bitPattern: try c.u64()))
    case 12: return .float(Double(bitPattern: try c.u64()))
    default: throw MoEError.format("\(c.what): unknown metadata value type \(type) at byte \(c.pos - 4)")
    }
  }

  public func value(_ key: String) -> GGUFValue? {
    metadata.first(where: { $0.0 == key })?.1
  }
}

/// GGUF tensors presented under HF names (GGUFLayout), dequantized to f32,
/// Q/K rows put back in HF order (llama.cpp permutes them for its RoPE
/// layout). An expert stack (`ffn_gate_exps` [E, rows, cols]) is presented as
/// E per-expert tensors, each a slice of the stack's bytes.
public final class GGUFSource: TensorSource {
  package struct Mapped {
    package var tensor: GGUFFile.Tensor
    package var info: TensorInfo
    /// Where the tensor's bytes start within the GGUF tensor (an expert's slice).
    var byteOffset: Int
    /// Heads for the Q/K un-permutation; 0 = rows kept as stored.
    var unpermuteHeads: Int
  }

  public let gguf: GGUFFile
  public private(set) var tensorNames: [String] = []
  private var mapped: [String: Mapped] = [:]

  /// `heads`/`kvHeads` drive the Q/K un-permutation (`permuteQK` false for Qwen2, which is stored unpermuted).
  public init(gguf: GGUFFile, heads: Int, kvHeads: Int, permuteQK: Bool) throws {
    self.gguf = gguf
    let arch = gguf.value("general.architecture")?.stringValue ?? "llama"
    for t in gguf.tensors {
      if let (layer, base, suffix) = GGUFLayout.split(t.name), let l = layer, suffix == "weight",
         let stack = GGUFLayout.expertStacks.first(where: { $0.gguf == base }) {
        try addExperts(t, layer: l, projection: stack.projection, architecture: arch)
        continue
      }
      guard let name = GGUFLayout.hfName(t.name, architecture: arch), let role = GGUFLayout.role(of: t.name) else { continue }
      var shape = Array(t.dims.reversed())
      if role.role == .sharedExpertGate && role.suffix == "weight" && shape.count == 1 { shape = [1, shape[0]] }
      var heads0 = 0
      if permuteQK && role.layer != nil && (role.suffix == "weight" || role.suffix == "bias") {
        if role.role == .query { heads0 = heads }
        if role.role == .key { heads0 = kvHeads }
      }
      if heads0 > 0 {
        // Divisible by 2 x heads, without forming 2 x heads (a file may claim any count).
        guard shape[0] % heads0 == 0, (shape[0] / heads0) % 2 == 0 else {
          throw MoEError.shape("'\(gguf.path)': tensor '\(t.name)' has \(shape[0]) rows, not divisible by 2 x \(heads0) heads")
        }
      }
      let info = TensorInfo(name: name, dtype: t.dtype, shape: shape, elementCount: t.elementCount, byteCount: t.byteCount)
      add(name, Mapped(tensor: t, info: info, byteOffset: 0, unpermuteHeads: heads0))
    }
  }

  private func add(_ name: String, _ m: Mapped) {
    if mapped[name] == nil { tensorNames.append(name) }
    mapped[name] = m
  }

  /// The E slices of an expert stack [E, rows, cols] (GGUF dims [cols, rows, E]).
  private func addExperts(_ t: GGUFFile.Tensor, layer l: Int, projection p: Projection, architecture arch: String) throws {
    guard t.dims.count == 3, t.dims[2] >= 1 else {
      throw MoEError.shape("'\(gguf.path)': expert stack '\(t.name)' has dimensions \(t.dims); expected [cols, rows, experts]")
    }
    let E = t.dims[2], rows = t.dims[1], cols = t.dims[0]
    let count = rows * cols
    let bytes = t.byteCount / E
    for e in 0..<E {
      let name = GGUFLayout.expertHF(arch, layer: l, expert: e, p)
      let info = TensorInfo(name: name, dtype: t.dtype, shape: [rows, cols], elementCount: count, byteCount: bytes)
      add(name, Mapped(tensor: t, info: info, byteOffset: e * bytes, unpermuteHeads: 0))
    }
  }

  public func info(_ name: String) -> TensorInfo? { mapped[name]?.info }

  public func readFloat(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
    guard let m = mapped[name] else { throw MoEError.notFound("tensor '\(name)' is missing from the checkpoint") }
    guard let base = gguf.file.bytes.baseAddress else { return }
    let src = base + gguf.dataStart + m.tensor.offset + m.byteOffset
    let count = m.info.elementCount
    guard m.unpermuteHeads > 0 else {
      decodeToFloat(m.tensor.dtype, src: src, count: count, dst: dst)
      return
    }
    // Stored row h*hd + 2*b + a holds HF row h*hd + a*half + b.
    let rows = m.info.shape[0]
    let cols = count / max(rows, 1)
    let headDim = rows / m.unpermuteHeads
    let half = headDim / 2
    let rowBytes = m.info.byteCount / max(rows, 1)
    for h in 0..<m.unpermuteHeads {
      for b in 0..<half {
        for a in 0..<2 {
          let stored = h * headDim + 2 * b + a
          let hf = h * headDim + a * half + b
          decodeToFloat(m.tensor.dtype, src: src + stored * rowBytes, count: cols, dst: dst + hf * cols)
        }
      }
    }
  }

  public func readStored(_ name: String, into dst: UnsafeMutableRawPointer) throws {
    guard let m = mapped[name] else { throw MoEError.notFound("tensor '\(name)' is missing from the checkpoint") }
    guard let base = gguf.file.bytes.baseAddress else { return }
    let src = UnsafeRawPointer(base + gguf.dataStart + m.tensor.offset + m.byteOffset)
    guard m.unpermuteHeads > 0 else {
      dst.copyMemory(from: src, byteCount: m.info.byteCount)
      return
    }
    // Whole rows move as readFloat moves them (a row is a whole number of blocks).
    let rows = m.info.shape[0], headDim = rows / m.unpermuteHeads, half = headDim / 2
    let rowBytes = m.info.byteCount / max(rows, 1)
    for h in 0..<m.unpermuteHeads {
      for b in 0..<half {
        for a in 0..<2 {
          dst.advanced(by: (h * headDim + a * half + b) * rowBytes)
            .copyMemory(from: src + (h * headDim + 2 * b + a) * rowBytes, byteCount: rowBytes)
        }
      }
    }
  }

  public func release(_ name: String) {
    guard let m = mapped[name] else { return }
    gguf.file.release(offset: gguf.dataStart + m.tensor.offset + m.byteOffset, count: m.info.byteCount)
  }
}
