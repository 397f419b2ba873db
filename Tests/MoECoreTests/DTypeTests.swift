import Testing
@testable import MoESupport

@Suite struct DTypeTests {
  // MARK: Metadata

  @Test func blockSizesAndNames() throws {
    let expected: [(DType, String, Int, Int)] = [
      (.f32, "F32", 1, 4), (.f16, "F16", 1, 2), (.bf16, "BF16", 1, 2),
      (.q8_0, "Q8_0", 32, 34), (.q4_0, "Q4_0", 32, 18), (.q4_1, "Q4_1", 32, 20),
    ]
    for (t, name, elems, bytes) in expected {
      #expect(t.name == name)
      #expect(t.blockElements == elems)
      #expect(t.blockBytes == bytes)
      #expect(t.isQuantized == (elems > 1))
    }
    #expect(DType(safetensorsName: "F32") == .f32)
    #expect(DType(safetensorsName: "F16") == .f16)
    #expect(DType(safetensorsName: "BF16") == .bf16)
    for bad in ["I64", "F64", "bf16", "Q8_0", "", "U8"] { #expect(DType(safetensorsName: bad) == nil) }

    #expect(try DType.f32.byteCount(elements: 10, what: "t") == 40)
    #expect(try DType.bf16.byteCount(elements: 7, what: "t") == 14)
    #expect(try DType.q8_0.byteCount(elements: 64, what: "t") == 68)
    #expect(try DType.q4_0.byteCount(elements: 96, what: "t") == 54)
    #expect(try DType.q4_1.byteCount(elements: 0, what: "t") == 0)
    let e = #expect(throws: MoEError.self) { try DType.q4_0.byteCount(elements: 33, what: "blk.0") }
    #expect(e?.kind == .format)
    #expect(e?.message.contains("blk.0") == true)
    let o = #expect(throws: MoEError.self) { try DType.f32.byteCount(elements: Int.max / 2, what: "t") }
    #expect(o?.kind == .outOfMemory)
  }

  // MARK: bf16

  @Test func bf16RoundTripsEveryNonNaNPattern() {
    var mismatches = 0
    var nanChecked = 0
    for bits in 0...UInt16.max {
      let f = bf16ToFloat(bits)
      // Exact widening: the float's bits are the bf16 bits followed by 16 zeros.
      if f.bitPattern != UInt32(bits) << 16 { mismatches += 1 }
      if f.isNaN {
        // NaN must stay NaN (never become infinity), sign kept.
        let back = floatToBF16(f)
        if !bf16ToFloat(back).isNaN || (back & 0x8000) != (bits & 0x8000) { mismatches += 1 }
        nanChecked += 1
        continue
      }
      if floatToBF16(f) != bits { mismatches += 1 }
    }
    #expect(mismatches == 0)
    #expect(nanChecked == 2 * 127)  // exponent all ones, 7-bit mantissa non-zero, both signs
  }

  @Test func floatToBF16RoundsToNearestEven() {
    let cases: [(UInt32, UInt16, String)] = [
      (0x3F80_0000, 0x3F80, "1.0 exact"),
      (0x3F80_8000, 0x3F80, "halfway, lower is even -> down"),
      (0x3F81_8000, 0x3F82, "halfway, lower is odd -> up"),
      (0x3F80_8001, 0x3F81, "just above halfway -> up"),
      (0x3F80_7FFF, 0x3F80, "just below halfway -> down"),
      (0x3F81_7FFF, 0x3F81, "just below halfway (odd) -> down"),
      (0xBF80_8000, 0xBF80, "negative halfway, even -> down in magnitude"),
      (0xBF81_8000, 0xBF82, "negative halfway, odd -> up in magnitude"),
      (0x3FFF_FFFF, 0x4000, "carry into the exponent"),
      (0x7F7F_7FFF, 0x7F7F, "below halfway at the top stays finite"),
      (0x7F7F_8000, 0x7F80, "halfway at the top (odd) -> infinity"),
      (0x7F7F_FFFF, 0x7F80, "max float -> infinity"),
      (0x7F80_0000, 0x7F80, "infinity"),
      (0xFF80_0000, 0xFF80, "-infinity"),
      (0x0000_0000, 0x0000, "+0"),
      (0x8000_0000, 0x8000, "-0"),
      (0x0000_8000, 0x0000, "subnormal halfway to 0 (even)"),
      (0x0001_8000, 0x0002, "subnormal halfway (odd) -> up"),
      (0x0000_8001, 0x0001, "subnormal above halfway"),
      (0x007F_FFFF, 0x0080, "largest subnormal -> smallest normal"),
    ]
    for (input, expected, what) in cases {
      let got = floatToBF16(Float(bitPattern: input))
      #expect(got == expected, "\(what): 0x\(String(input, radix: 16)) -> 0x\(String(got, radix: 16))")
    }
    // NaNs whose payload sits only in the dropped low bits must not turn into infinity.
    for nan: UInt32 in [0x7F80_0001, 0xFF80_0001, 0x7F80_FFFF, 0x7FC0_0000, 0x7FFF_FFFF] {
      let b = floatToBF16(Float(bitPattern: nan))
      #expect(bf16ToFloat(b).isNaN, "NaN 0x\(String(nan, radix: 16)) -> 0x\(String(b, radix: 16))")
      #expect(b & 0x8000 == UInt16(nan >> 16) & 0x8000)
    }
  }

  /// floatToBF16 against a brute-force nearest-value reference on random finite floats.
  @Test func floatToBF16MatchesReferenceOnRandomFloats() {
    var rng = Rng(seed: 5)
    var bad = 0
    for _ in 0..<200_000 {
      let bits = UInt32(truncatingIfNeeded: rng.next())
      let f = Float(bitPattern: bits)
      guard f.isFinite else { continue }
      let down = UInt16(bits >> 16)
      let up = down &+ 1
      let x = Double(f)
      let dDown = abs(x - Double(bf16ToFloat(down)))
      let upValue = bf16ToFloat(up)
      let dUp = upValue.isInfinite ? Double.infinity : abs(Double(upValue) - x)
      var expected: UInt16
      if dDown < dUp { expected = down } else if dUp < dDown { expected = up } else { expected = (down & 1) == 0 ? down : up }
      // Halfway past the largest finite bf16 magnitude rounds to infinity (IEEE overflow rule).
      if upValue.isInfinite && (bits & 0xFFFF) >= 0x8000 && (down & 1) == 1 { expected = up }
      if floatToBF16(f) != expected { bad += 1 }
    }
    #expect(bad == 0)
  }

  // MARK: f16

  @Test func f16RoundTripsEveryNonNaNPattern() {
    var mismatches = 0
    for bits in 0...UInt16.max {
      let f = f16ToFloat(bits)
      if f.isNaN {
        if !f16ToFloat(floatToF16(f)).isNaN { mismatches += 1 }
        continue
      }
      if floatToF16(f) != bits { mismatches += 1 }
    }
    #expect(mismatches == 0)
    #expect(f16ToFloat(0x3C00) == 1)
    #expect(f16ToFloat(0x3800) == 0.5)
    #expect(f16ToFloat(0xBC00) == -1)
    #expect(f16ToFloat(0x0001) == 0x1.0p-24)  // smallest subnormal
    #expect(f16ToFloat(0x7BFF) == 65504)
    #expect(floatToF16(65520) == 0x7C00)      // rounds to infinity
    #expect(floatToF16(1 + 0x1.0p-11) == 0x3C00)  // halfway, even -> down
    #expect(floatToF16(1 + 3 * 0x1.0p-11) == 0x3C02)  // halfway, odd -> up
  }

  // MARK: Quantized decoding

  private static func decode(_ t: DType, _ bytes: [UInt8], count: Int) -> [Float] {
    var out = [Float](repeating: .nan, count: count)
    bytes.withUnsafeBytes { src in
      out.withUnsafeMutableBufferPointer { decodeToFloat(t, src: src.baseAddress!, count: count, dst: $0.baseAddress!) }
    }
    return out
  }

  private static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }

  @Test func decodesQ8_0() {
    // Block 0: d = 0.5, qs = -128, -127, ..., -97 ; block 1: d = -2, qs = 0, 4, ..., 124 (then wraps).
    var bytes: [UInt8] = Self.le16(0x3800)
    let q0: [Int8] = (0..<32).map { Int8(-128 + $0) }
    bytes += q0.map { UInt8(bitPattern: $0) }
    bytes += Self.le16(0xC000)  // -2.0
    let q1: [Int8] = (0..<32).map { Int8(truncatingIfNeeded: $0 * 9 - 100) }
    bytes += q1.map { UInt8(bitPattern: $0) }
    #expect(bytes.count == 68)
    let out = Self.decode(.q8_0, bytes, count: 64)
    for j in 0..<32 {
      #expect(out[j] == Float(q0[j]) * 0.5, "block 0 element \(j)")
      #expect(out[32 + j] == Float(q1[j]) * -2, "block 1 element \(j)")
    }
    #expect(out[0] == -64)
    #expect(out[31] == -48.5)
  }

  @Test func decodesQ4_0() {
    // Byte j holds element j in its low nibble and element j+16 in its high nibble.
    var bytes: [UInt8] = Self.le16(0x3800)  // d = 0.5
    for j in 0..<16 { bytes.append(UInt8(j) | UInt8(15 - j) << 4) }
    bytes += Self.le16(0x4000)  // d = 2
    for j in 0..<16 { bytes.append(UInt8((j * 7) & 15) | UInt8((j * 3 + 1) & 15) << 4) }
    #expect(bytes.count == 36)
    let out = Self.decode(.q4_0, bytes, count: 64)
    for j in 0..<16 {
      #expect(out[j] == Float(j - 8) * 0.5, "element \(j)")
      #expect(out[j + 16] == Float(15 - j - 8) * 0.5, "element \(j + 16)")
      #expect(out[32 + j] == Float(((j * 7) & 15) - 8) * 2, "block 1 element \(j)")
      #expect(out[48 + j] == Float(((j * 3 + 1) & 15) - 8) * 2, "block 1 element \(j + 16)")
    }
    #expect(out[0] == -4)     // q = 0 -> -8 d
    #expect(out[16] == 3.5)   // q = 15 -> 7 d
  }

  @Test func decodesQ4_1() {
    var bytes: [UInt8] = Self.le16(0x3800) + Self.le16(0xBC00)  // d = 0.5, m = -1
    for j in 0..<16 { bytes.append(UInt8(j) | UInt8(15 - j) << 4) }
    bytes += Self.le16(0x3C00) + Self.le16(0x4500)  // d = 1, m = 5
    for j in 0..<16 { bytes.append(UInt8((j * 5) & 15) | UInt8((j + 9) & 15) << 4) }
    #expect(bytes.count == 40)
    let out = Self.decode(.q4_1, bytes, count: 64)
    for j in 0..<16 {
      #expect(out[j] == Float(j) * 0.5 - 1, "element \(j)")
      #expect(out[j + 16] == Float(15 - j) * 0.5 - 1, "element \(j + 16)")
      #expect(out[32 + j] == Float((j * 5) & 15) + 5, "block 1 element \(j)")
      #expect(out[48 + j] == Float((j + 9) & 15) + 5, "block 1 element \(j + 16)")
    }
    #expect(out[0] == -1)
    #expect(out[16] == 6.5)
  }

  @Test func decodesFromUnalignedSource() {
    // A Q8_0 block and f32 values starting at an odd address.
    var bytes: [UInt8] = [0xAA] + Self.le16(0x3C00) + (0..<32).map { UInt8($0) }
    let out = bytes.withUnsafeBytes { raw -> [Float] in
      var o = [Float](repeating: 0, count: 32)
      o.withUnsafeMutableBufferPointer { decodeToFloat(.q8_0, src: raw.baseAddress! + 1, count: 32, dst: $0.baseAddress!) }
      return o
    }
    #expect(out == (0..<32).map { Float($0) })
    bytes = [0xAA]
    for v: Float in [1.5, -2.25, 1e-30] { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
    let f = bytes.withUnsafeBytes { raw -> [Float] in
      var o = [Float](repeating: 0, count: 3)
      o.withUnsafeMutableBufferPointer { decodeToFloat(.f32, src: raw.baseAddress! + 1, count: 3, dst: $0.baseAddress!) }
      return o
    }
    #expect(f == [1.5, -2.25, 1e-30])
  }

  // MARK: Plain round trips

  private static func encode(_ t: DType, _ values: [Float]) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: values.count * t.blockBytes)
    values.withUnsafeBufferPointer { src in
      bytes.withUnsafeMutableBytes { encodeFromFloat(t, src: src.baseAddress!, count: values.count, dst: $0.baseAddress!) }
    }
    return bytes
  }

  @Test func encodeDecodeRoundTrip() {
    var rng = Rng(seed: 9)
    var values: [Float] = (0..<1000).map { _ in Float(rng.normal() * 3) }
    values += [0, -0.0, 1, -1, 65504, .infinity, -.infinity, 0x1.0p-20]

    // f32: exact, little-endian layout.
    let f32 = Self.encode(.f32, values)
    #expect(Array(Self.encode(.f32, [1])) == [0x00, 0x00, 0x80, 0x3F])
    let back32 = Self.decode(.f32, f32, count: values.count)
    #expect(zip(values, back32).allSatisfy { $0.bitPattern == $1.bitPattern })

    // bf16: decode(encode(x)) == bf16-rounded x, relative error <= 2^-8 (half an ulp).
    #expect(Array(Self.encode(.bf16, [1, -2])) == [0x80, 0x3F, 0x00, 0xC0])
    let bf = Self.decode(.bf16, Self.encode(.bf16, values), count: values.count)
    for (x, y) in zip(values, bf) {
      #expect(y == bf16ToFloat(floatToBF16(x)))
      if x.isFinite && x != 0 { #expect(abs(y - x) <= abs(x) * 0x1.0p-8 * 1.0001) }
    }
    // Values already representable come back exactly.
    let exactBF = bf.filter { $0.isFinite }
    #expect(Self.decode(.bf16, Self.encode(.bf16, exactBF), count: exactBF.count) == exactBF)

    // f16: decode(encode(x)) == f16-rounded x, relative error <= 2^-11 for normal values.
    #expect(Array(Self.encode(.f16, [1, -2])) == [0x00, 0x3C, 0x00, 0xC0])
    let h = Self.decode(.f16, Self.encode(.f16, values), count: values.count)
    for (x, y) in zip(values, h) {
      #expect(y == Float(Float16(x)))
      if x.isFinite && abs(x) >= 0x1.0p-14 && abs(x) <= 65504 { #expect(abs(y - x) <= abs(x) * 0x1.0p-11 * 1.0001) }
    }
    let exactH = h.filter { $0.isFinite }
    #expect(Self.decode(.f16, Self.encode(.f16, exactH), count: exactH.count) == exactH)
  }
}
