@testable import MoESupport
@testable import MoEFormats
#if canImport(Glibc)
import Glibc
#endif
import Testing

@Suite struct SafetensorsTests {
  static let path = "/models/x/model.safetensors"

  typealias Parsed = (entries: [Safetensors.Entry], dataStart: Int, metadata: [(String, String)])

  static func parse(_ bytes: [UInt8]) throws -> Parsed {
    try bytes.withUnsafeBytes { try Safetensors.parseHeader($0, path: path) }
  }

  /// A file: 8-byte little-endian header length, the header text, `data` zero bytes.
  static func file(_ header: String, data: Int, length: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var out = [UInt8]()
    withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { out += $0 }
    out += h
    out += [UInt8](repeating: 0, count: data)
    return out
  }

  /// Parses `bytes`, expecting a MoEError of `kind` whose message contains every string of `mentions`.
  static func expectRejection(_ bytes: [UInt8], _ kind: MoEErrorKind, mentions: [String],
                              sourceLocation: SourceLocation = #_sourceLocation) {
    do {
      _ = try parse(bytes)
      Issue.record("accepted an invalid file", sourceLocation: sourceLocation)
    } catch let e as MoEError {
      #expect(e.kind == kind, "kind \(e.kind) for: \(e.message)", sourceLocation: sourceLocation)
      for m in mentions + [path] {
        #expect(e.message.contains(m), "message '\(e.message)' does not mention \(m)", sourceLocation: sourceLocation)
      }
    } catch {
      Issue.record("threw \(error), not a MoEError", sourceLocation: sourceLocation)
    }
  }

  // MARK: Valid files

  @Test func parsesFileBuiltByHeaderBytes() throws {
    let tensors: [(name: String, dtype: DType, shape: [Int])] = [
      ("model.a.weight", .f32, [2, 3]), ("b", .bf16, [4]), ("c", .f16, [1, 1, 5]), ("scalar", .f32, []),
      ("empty", .f32, [0, 3]),
    ]
    let header = Safetensors.headerBytes(tensors: tensors, metadata: [("format", "pt"), ("note", "x\"y")])
    #expect(header.count % 8 == 0)
    let n = header.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    #expect(Int(UInt64(littleEndian: n)) == header.count - 8)

    // Data: a = 0..5 (f32), b = bf16(-1, 0.5, 2, 3), c = f16(0..4), scalar = 7.
    var data: [UInt8] = []
    let aValues: [Float] = [0, 1, 2, 3, 4, 5]
    for v in aValues { withUnsafeBytes(of: v.bitPattern.littleEndian) { data += $0 } }
    for v: Float in [-1, 0.5, 2, 3] { withUnsafeBytes(of: floatToBF16(v).littleEndian) { data += $0 } }
    for v in 0..<5 { withUnsafeBytes(of: floatToF16(Float(v)).littleEndian) { data += $0 } }
    withUnsafeBytes(of: Float(7).bitPattern.littleEndian) { data += $0 }
    #expect(data.count == 24 + 8 + 10 + 4)
    let bytes = header + data

    let parsed = try Self.parse(bytes)
    #expect(parsed.dataStart == header.count)
    #expect(parsed.metadata.map { $0.0 } == ["format", "note"])
    #expect(parsed.metadata.map { $0.1 } == ["pt", "x\"y"])
    #expect(parsed.entries.map { $0.info.name } == tensors.map { $0.name })
    let expected: [(DType, [Int], Int, Int, Int)] = [  // dtype, shape, elements, begin, end
      (.f32, [2, 3], 6, 0, 24), (.bf16, [4], 4, 24, 32), (.f16, [1, 1, 5], 5, 32, 42),
      (.f32, [], 1, 42, 46), (.f32, [0, 3], 0, 46, 46),
    ]
    for (e, x) in zip(parsed.entries, expected) {
      #expect(e.info.dtype == x.0)
      #expect(e.info.shape == x.1)
      #expect(e.info.elementCount == x.2)
      #expect(e.begin == x.3 && e.end == x.4, "\(e.info.name): [\(e.begin), \(e.end)]")
      #expect(e.info.byteCount == x.4 - x.3)
    }

    // The offsets point at the right bytes.
    func read(_ i: Int) -> [Float] {
      let e = parsed.entries[i]
      var out = [Float](repeating: 0, count: e.info.elementCount)
      bytes.withUnsafeBytes { raw in
        out.withUnsafeMutableBufferPointer {
          decodeToFloat(e.info.dtype, src: raw.baseAddress! + parsed.dataStart + e.begin, count: e.info.elementCount, dst: $0.baseAddress!)
        }
      }
      return out
    }
    #expect(read(0) == aValues)
    #expect(read(1) == [-1, 0.5, 2, 3])
    #expect(read(2) == [0, 1, 2, 3, 4])
    #expect(read(3) == [7])
    #expect(read(4) == [])
  }

  @Test func parsesEmptyAndHandWrittenFiles() throws {
    let empty = try Self.parse(Safetensors.headerBytes(tensors: [], metadata: []))
    #expect(empty.entries.isEmpty && empty.metadata.isEmpty)
    #expect(empty.dataStart == 8 + 8)  // "{}" padded to 8 bytes

    // Offsets in any key order, entries listed out of data order, whitespace padding.
    let text = #"{"b": {"data_offsets": [8, 12], "shape": [1], "dtype": "F32"}, "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}    "#
    let p = try Self.parse(Self.file(text, data: 12))
    #expect(p.entries.map { $0.info.name } == ["b", "a"])
    #expect(p.entries[0].begin == 8 && p.entries[0].end == 12)
    #expect(p.entries[1].info.dtype == .bf16 && p.entries[1].info.shape == [2, 2])
    #expect(p.dataStart == 8 + text.utf8.count)
  }

  // MARK: Rejections

  @Test func rejectsTooShortFile() {
    Self.expectRejection([1, 0, 0], .format, mentions: ["too short"])
    Self.expectRejection([], .format, mentions: [])
  }

  @Test func rejectsHeaderOver100MB() {
    Self.expectRejection(Self.file("{}", data: 0, length: UInt64(100 << 20) + 1), .format, mentions: ["100 MB"])
    Self.expectRejection(Self.file("{}", data: 0, length: UInt64.max), .format, mentions: ["100 MB"])
    Self.expectRejection(Self.file("{}", data: 0, length: 1 << 63), .format, mentions: ["100 MB"])
  }

  @Test func rejectsHeaderBeyondFile() {
    Self.expectRejection(Self.file("{}", data: 0, length: 3), .format, mentions: ["truncated"])
    Self.expectRejection(Self.file("{}", data: 0, length: UInt64(100 << 20)), .format, mentions: ["truncated"])
  }

  @Test func rejectsNonObjectOrInvalidHeader() {
    Self.expectRejection(Self.file("[1, 2]", data: 0), .format, mentions: ["not a JSON object"])
    Self.expectRejection(Self.file("\"x\"", data: 0), .format, mentions: ["not a JSON object"])
    Self.expectRejection(Self.file("{", data: 0), .format, mentions: [])
    Self.expectRejection(Self.file("{} x", data: 0), .format, mentions: [])
    // The declared length cuts the JSON short: the rest is data, and the JSON is incomplete.
    Self.expectRejection(Self.file(#"{"a": 1}"#, data: 0, length: 4), .format, mentions: [])
  }

  @Test func rejectsMissingOrUnknownDType() {
    Self.expectRejection(Self.file(#"{"w.0": {"shape": [1], "data_offsets": [0, 4]}}"#, data: 4),
                         .format, mentions: ["'w.0'", "dtype"])
    Self.expectRejection(Self.file(#"{"w.0": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}}"#, data: 4),
                         .format, mentions: ["'w.0'", "dtype"])
    Self.expectRejection(Self.file(#"{"w.1": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}"#, data: 8),
                         .unsupported, mentions: ["'w.1'", "I64"])
    Self.expectRejection(Self.file(#"{"w.1": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}"#, data: 8),
                         .unsupported, mentions: ["'w.1'", "F64"])
  }

  @Test func rejectsBadShapes() {
    Self.expectRejection(Self.file(#"{"s": {"dtype": "F32", "data_offsets": [0, 4]}}"#, data: 4),
                         .format, mentions: ["'s'", "shape"])
    Self.expectRejection(Self.file(#"{"s": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, data: 4),
                         .format, mentions: ["'s'"])
    Self.expectRejection(Self.file(#"{"s": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}"#, data: 4),
                         .format, mentions: ["'s'"])
    Self.expectRejection(Self.file(#"{"s": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}"#, data: 16),
                         .format, mentions: ["'s'"])
    // Element count overflows Int.
    let huge = #"{"s": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 4]}}"#
    do {
      _ = try Self.parse(Self.file(huge, data: 4))
      Issue.record("accepted an overflowing shape")
    } catch let e as MoEError {
      #expect(e.kind == .outOfMemory || e.kind == .format)
      #expect(e.message.contains("'s'"))
    } catch { Issue.record("\(error)") }
  }

  @Test func rejectsSizeMismatch() {
    Self.expectRejection(Self.file(#"{"m.w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}"#, data: 12),
                         .format, mentions: ["'m.w'", "12", "16"])
    Self.expectRejection(Self.file(#"{"m.w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 16]}}"#, data: 16),
                         .format, mentions: ["'m.w'"])
  }

  @Test func rejectsOffsetsOutOfRangeOrMalformed() {
    // end beyond the data section
    Self.expectRejection(Self.file(#"{"o": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]}}"#, data: 16),
                         .format, mentions: ["'o'", "out of range"])
    // end before begin
    Self.expectRejection(Self.file(#"{"o": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}"#, data: 8),
                         .format, mentions: ["'o'", "out of range"])
    // negative begin
    Self.expectRejection(Self.file(#"{"o": {"dtype": "F32", "shape": [2], "data_offsets": [-4, 4]}}"#, data: 8),
                         .format, mentions: ["'o'", "out of range"])
    // malformed data_offsets
    for offs in ["[0]", "[0, 4, 8]", "[0, 4.5]", "\"0-4\"", "[\"0\", 4]"] {
      Self.expectRejection(Self.file(#"{"o": {"dtype": "F32", "shape": [1], "data_offsets": \#(offs)}}"#, data: 4),
                           .format, mentions: ["'o'", "data_offsets"])
    }
    Self.expectRejection(Self.file(#"{"o": {"dtype": "F32", "shape": [1]}}"#, data: 4),
                         .format, mentions: ["'o'", "data_offsets"])
  }

  @Test func rejectsOverlappingOffsets() {
    let h = #"{"first": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "second": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#
    Self.expectRejection(Self.file(h, data: 12), .format, mentions: ["'second'", "overlap"])
    // Listed in the other order: still the later one in the data is named.
    let h2 = #"{"second": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}, "first": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#
    Self.expectRejection(Self.file(h2, data: 12), .format, mentions: ["'second'", "overlap"])
    // Two tensors on exactly the same bytes.
    let h3 = #"{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "y": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#
    Self.expectRejection(Self.file(h3, data: 4), .format, mentions: ["overlap"])
  }

  @Test func rejectsGapBetweenTensors() {
    let h = #"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}"#
    Self.expectRejection(Self.file(h, data: 12), .format, mentions: ["'b'", "gap of 4 bytes"])
    // A gap before the first tensor.
    Self.expectRejection(Self.file(#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#, data: 8),
                         .format, mentions: ["'a'", "gap"])
  }

  @Test func rejectsTrailingData() {
    Self.expectRejection(Self.file(#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#, data: 8),
                         .format, mentions: ["4 bytes of trailing data"])
    Self.expectRejection(Self.file("{}", data: 1), .format, mentions: ["trailing"])
    var good = Safetensors.headerBytes(tensors: [("t", .f16, [3])], metadata: [])
    good += [UInt8](repeating: 0, count: 6)
    #expect(throws: Never.self) { try Self.parse(good) }
    Self.expectRejection(good + [0], .format, mentions: ["1 bytes of trailing data"])
  }

  @Test func rejectsBadMetadata() {
    Self.expectRejection(Self.file(#"{"__metadata__": {"k": 1}}"#, data: 0), .format, mentions: ["'k'"])
    Self.expectRejection(Self.file(#"{"__metadata__": ["x"]}"#, data: 0), .format, mentions: ["__metadata__"])
  }

  // MARK: Through a file on disk

  @Test func sourceReadsTensorsFromDisk() throws {
    let dir = "/tmp/moecore-tests-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileSystem.makeDirectory(dir)
    defer { FileSystem.removeTree(dir) }
    let path = FileSystem.join(dir, "model.safetensors")
    var bytes = Safetensors.headerBytes(tensors: [("w", .bf16, [2, 2]), ("v", .f32, [3])], metadata: [("format", "pt")])
    for v: Float in [1, -2, 0.25, 8] { withUnsafeBytes(of: floatToBF16(v).littleEndian) { bytes += $0 } }
    for v: Float in [3.5, -0.125, 1e10] { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
    let out = try OutputFile(path: path)
    try out.write(bytes)
    try out.close()

    let src = try SafetensorsSource(directory: dir)
    #expect(src.tensorNames == ["w", "v"])
    #expect(src.metadata.first?.0 == "format")
    #expect(src.info("w")?.shape == [2, 2])
    #expect(src.dataBytes == 8 + 12)
    #expect(try src.readFloat("w", shape: [2, 2]) == [1, -2, 0.25, 8])
    #expect(try src.readFloat("v", shape: [3]) == [3.5, -0.125, 1e10])
    let shapeErr = #expect(throws: MoEError.self) { try src.readFloat("v", shape: [1, 3]) }
    #expect(shapeErr?.kind == .shape)
    let missing = #expect(throws: MoEError.self) { try src.readFloat("nope", shape: [1]) }
    #expect(missing?.kind == .notFound)
  }
}
