/// Storage types of checkpoint tensors. Raw values equal the ABI's `moe_dtype`.
public enum DType: Int32, Sendable, CaseIterable {
  case f32 = 0, f16 = 1, bf16 = 2, q8_0 = 3, q4_0 = 4, q4_1 = 5

  public var name: String {
    switch self {
    case .f32: return "F32"
    case .f16: return "F16"
    case .bf16: return "BF16"
    case .q8_0: return "Q8_0"
    case .q4_0: return "Q4_0"
    case .q4_1: return "Q4_1"
    }
  }

  /// Elements per block and bytes per block (1 element for plain types).
  public var blockElements: Int {
    switch self {
    case .f32, .f16, .bf16: return 1
    case .q8_0, .q4_0, .q4_1: return 32
    }
  }

  public var blockBytes: Int {
    switch self {
    case .f32: return 4
    case .f16, .bf16: return 2
    case .q8_0: return 34
    case .q4_0: return 18
    case .q4_1: return 20
    }
  }

  public var isQuantized: Bool { blockElements > 1 }

  /// Bytes for `count` elements; throws if `count` is not a whole number of blocks.
  public func byteCount(elements count: Int, what: String) throws -> Int {
    guard count % blockElements == 0 else {
      throw MoEError.format("\(what): \(count) elements is not a multiple of the \(name) block size \(blockElements)")
    }
    let (b, o) = (count / blockElements).multipliedReportingOverflow(by: blockBytes)
    guard !o else { throw MoEError(.outOfMemory, "\(what): byte size overflows") }
    return b
  }

  /// safetensors dtype names this library reads.
  public init?(safetensorsName: String) {
    switch safetensorsName {
    case "F32": self = .f32
    case "F16": self = .f16
    case "BF16": self = .bf16
    default: return nil
    }
  }
}

// MARK: - Scalar conversions

@inlinable @inline(always)
public func bf16ToFloat(_ bits: UInt16) -> Float {
  Float(bitPattern: UInt32(bits) << 16)
}

/// Round-to-nearest-even; NaN stays NaN.
@inlinable @inline(always)
public func floatToBF16(_ value: Float) -> UInt16 {
  let bits = value.bitPattern
  if value.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x40) }
  let rounding = UInt32(0x7FFF) + ((bits >> 16) & 1)
  return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
}

@inlinable @inline(always)
public func f16ToFloat(_ bits: UInt16) -> Float {
  Float(Float16(bitPattern: bits))
}

@inlinable @inline(always)
public func floatToF16(_ value: Float) -> UInt16 {
  Float16(value).bitPattern
}

// MARK: - Bulk conversions

@inline(__always)
private func loadU16(_ p: UnsafeRawPointer, _ offset: Int) -> UInt16 {
  UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
}

/// Decodes `count` elements of `dtype` at `src` (little-endian, blocks as in GGUF)
/// into f32 at `dst`. `count` must be a whole number of blocks for quantized types.
public func decodeToFloat(_ dtype: DType, src: UnsafeRawPointer, count: Int, dst: UnsafeMutablePointer<Float>) {
  switch dtype {
  case .f32:
    for i in 0..<count {
      dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
    }
  case .f16:
    for i in 0..<count { dst[i] = f16ToFloat(loadU16(src, 2 * i)) }
  case .bf16:
    for i in 0..<count { dst[i] = bf16ToFloat(loadU16(src, 2 * i)) }
  case .q8_0:
    for b in 0..<(count / 32) {
      let block = src + b * 34
      let d = f16ToFloat(loadU16(block, 0))
      let out = dst + b * 32
      for j in 0..<32 {
        out[j] = d * Float(Int8(bitPattern: block.load(fromByteOffset: 2 + j, as: UInt8.self)))
      }
    }
  case .q4_0:
    for b in 0..<(count / 32) {
      let block = src + b * 18
      let d = f16ToFloat(loadU16(block, 0))
      let out = dst + b * 32
      for j in 0..<16 {
        let q = block.load(fromByteOffset: 2 + j, as: UInt8.self)
        out[j] = Float(Int(q & 0x0F) - 8) * d
        out[j + 16] = Float(Int(q >> 4) - 8) * d
      }
    }
  case .q4_1:
    for b in 0..<(count / 32) {
      let block = src + b * 20
      let d = f16ToFloat(loadU16(block, 0))
      let m = f16ToFloat(loadU16(block, 2))
      let out = dst + b * 32
      for j in 0..<16 {
        let q = block.load(fromByteOffset: 4 + j, as: UInt8.self)
        out[j] = Float(q & 0x0F) * d + m
        out[j + 16] = Float(q >> 4) * d + m
      }
    }
  }
}

/// Encodes f32 values into a storage type, little-endian: F32, F16, BF16, or
/// GGML's quantized blocks (Q8_0, Q4_0, Q4_1) for a whole number of blocks.
public func encodeFromFloat(_ dtype: DType, src: UnsafePointer<Float>, count: Int, dst: UnsafeMutableRawPointer) {
  switch dtype {
  case .f32:
    for i in 0..<count { dst.storeBytes(of: src[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
  case .f16:
    for i in 0..<count { dst.storeBytes(of: floatToF16(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
  case .bf16:
    for i in 0..<count { dst.storeBytes(of: floatToBF16(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
  case .q8_0, .q4_0, .q4_1:
    // Whole blocks only (callers check count against blockElements); a tail is ignored.
    for b in 0..<(count / 32) { quantizeBlock(dtype, src + 32 * b, dst + b * dtype.blockBytes) }
  }
}

/// One block of 32 values in GGML's Q8_0, Q4_0 or Q4_1 layout (the reference
/// quantizers: the scale is computed in f32 and stored as f16).
func quantizeBlock(_ dtype: DType, _ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
  func store16(_ v: Float, at offset: Int) { out.storeBytes(of: floatToF16(v).littleEndian, toByteOffset: offset, as: UInt16.self) }
  // v clamped into lo...hi (NaN, from a non-finite weight, gives lo): never a trapping conversion.
  func clamp(_ v: Float, _ lo: Float, _ hi: Float) -> Float { v >= lo ? (v <= hi ? v : hi) : lo }
  switch dtype {
  case .q8_0:
    var amax: Float = 0
    for j in 0..<32 { amax = max(amax, abs(x[j])) }
    let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
    store16(d, at: 0)
    for j in 0..<32 { out.storeBytes(of: Int8(clamp((x[j] * id).rounded(), -127, 127)), toByteOffset: 2 + j, as: Int8.self) }
  case .q4_0:
    // The value of largest magnitude, with its sign, maps to -8.
    var amax: Float = 0, signed: Float = 0
    for j in 0..<32 where abs(x[j]) > amax { amax = abs(x[j]); signed = x[j] }
    let d = signed / -8, id: Float = d != 0 ? 1 / d : 0
    store16(d, at: 0)
    for j in 0..<16 {
      let lo = UInt8(clamp(x[j] * id + 8.5, 0, 15.5))
      let hi = UInt8(clamp(x[j + 16] * id + 8.5, 0, 15.5))
      out.storeBytes(of: lo | (hi << 4), toByteOffset: 2 + j, as: UInt8.self)
    }
  case .q4_1:
    var lo = Float.infinity, hi = -Float.infinity
    for j in 0..<32 { lo = min(lo, x[j]); hi = max(hi, x[j]) }
    let d = (hi - lo) / 15, id: Float = d != 0 ? 1 / d : 0
    store16(d, at: 0)
    store16(lo, at: 2)
    for j in 0..<16 {
      let a = UInt8(clamp((x[j] - lo) * id + 0.5, 0, 15.5))
      let b = UInt8(clamp((x[j + 16] - lo) * id + 0.5, 0, 15.5))
      out.storeBytes(of: a | (b << 4), toByteOffset: 4 + j, as: UInt8.self)
    }
  case .f32, .f16, .bf16:
    break
  }
}
