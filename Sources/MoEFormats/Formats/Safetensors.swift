import MoESupport

/// safetensors: an 8-byte little-endian header length N, N bytes of JSON
/// header, then the tensor data. Offsets in the header are relative to the
/// data start; entries must tile the data section exactly.
public enum Safetensors {
  public static let maxHeaderBytes = 100 << 20

  public struct Entry: Sendable {
    public var info: TensorInfo
    /// Byte range within the data section.
    public var begin: Int
    public var end: Int
  }

  /// Parses and validates a safetensors file's header against its size.
  public static func parseHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws
    -> (entries: [Entry], dataStart: Int, metadata: [(String, String)])
  {
    guard bytes.count >= 8 else {
      throw MoEError.format("'\(path)': file is \(bytes.count) bytes, too short for a safetensors header")
    }
    let n64 = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
    guard n64 <= UInt64(maxHeaderBytes) else {
      throw MoEError.format("'\(path)': safetensors header length \(n64) exceeds the 100 MB limit")
    }
    let n = Int(n64)
    guard 8 + n <= bytes.count else {
      throw MoEError.format("'\(path)': truncated: header length \(n) but the file has \(bytes.count - 8) bytes after the length")
    }
    let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)])
    let json = try JSONParser.parse(headerBytes, what: "'\(path)' safetensors header")
    guard let pairs = json.objectValue else {
      throw MoEError.format("'\(path)': safetensors header is not a JSON object")
    }
    let dataStart = 8 + n
    let dataSize = bytes.count - dataStart
    var entries: [Entry] = []
    var metadata: [(String, String)] = []
    var names = Set<String>()
    for (name, value) in pairs {
      guard names.insert(name).inserted else {
        throw MoEError.format("'\(path)': tensor '\(name)' appears twice in the header")
      }
      if name == "__metadata__" {
        guard let meta = value.objectValue else {
          throw MoEError.format("'\(path)': __metadata__ must be an object of strings")
        }
        for (k, v) in meta {
          guard let s = v.stringValue else { throw MoEError.format("'\(path)': __metadata__ value of '\(k)' is not a string") }
          metadata.append((k, s))
        }
        continue
      }
      guard let dtypeName = value["dtype"]?.stringValue else {
        throw MoEError.format("'\(path)': tensor '\(name)' has no dtype")
      }
      guard let dtype = DType(safetensorsName: dtypeName) else {
        throw MoEError.unsupported("'\(path)': tensor '\(name)' has dtype \(dtypeName); supported: F32, F16, BF16")
      }
      guard let shapeJSON = value["shape"]?.arrayValue else {
        throw MoEError.format("'\(path)': tensor '\(name)' has no shape")
      }
      var shape: [Int] = []
      for d in shapeJSON {
        guard let v = d.intValue, v >= 0 else { throw MoEError.format("'\(path)': tensor '\(name)' has an invalid dimension") }
        shape.append(v)
      }
      guard let offs = value["data_offsets"]?.arrayValue, offs.count == 2,
            let begin = offs[0].intValue, let end = offs[1].intValue else {
        throw MoEError.format("'\(path)': tensor '\(name)' has invalid data_offsets")
      }
      guard begin >= 0, end >= begin, end <= dataSize else {
        throw MoEError.format("'\(path)': tensor '\(name)' data_offsets [\(begin), \(end)] are out of range (data section is \(dataSize) bytes)")
      }
      let count = try checkedProduct(shape, what: "'\(path)': tensor '\(name)'")
      let expected = try dtype.byteCount(elements: count, what: "'\(path)': tensor '\(name)'")
      guard end - begin == expected else {
        throw MoEError.format("'\(path)': tensor '\(name)' occupies \(end - begin) bytes but shape \(shape) of \(dtypeName) needs \(expected)")
      }
      entries.append(Entry(info: TensorInfo(name: name, dtype: dtype, shape: shape, elementCount: count, byteCount: expected),
                           begin: begin, end: end))
    }
    // The entries must tile the data section: no overlap, no gap, no trailing bytes.
    let sorted = entries.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
    var cursor = 0
    for e in sorted {
      if e.begin < cursor {
        throw MoEError.format("'\(path)': tensor '\(e.info.name)' overlaps the previous tensor's data")
      }
      if e.begin > cursor {
        throw MoEError.format("'\(path)': gap of \(e.begin - cursor) bytes before tensor '\(e.info.name)' (offsets must be contiguous)")
      }
      cursor = e.end
    }
    if cursor != dataSize {
      throw MoEError.format("'\(path)': \(dataSize - cursor) bytes of trailing data after the last tensor")
    }
    return (entries, dataStart, metadata)
  }

  /// Builds the header bytes (length prefix + JSON padded to 8 bytes) for tensors laid out in order.
  public static func headerBytes(tensors: [(name: String, dtype: DType, shape: [Int])],
                                 metadata: [(String, String)]) -> [UInt8] {
    var pairs: [(String, JSON)] = []
    if !metadata.isEmpty {
      pairs.append(("__metadata__", .object(metadata.map { ($0.0, .string($0.1)) })))
    }
    var offset = 0
    for t in tensors {
      let count = t.shape.reduce(1, *)
      let bytes = count * t.dtype.blockBytes
      pairs.append((t.name, .object([
        ("dtype", .string(t.dtype.name)),
        ("shape", .array(t.shape.map { .int($0) })),
        ("data_offsets", .array([.int(offset), .int(offset + bytes)])),
      ])))
      offset += bytes
    }
    var json = Array(JSON.object(pairs).serialized().utf8)
    while json.count % 8 != 0 { json.append(0x20) }
    var out = [UInt8]()
    out.reserveCapacity(8 + json.count)
    var n = UInt64(json.count).littleEndian
    withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
    out.append(contentsOf: json)
    return out
  }
}

/// A tensor source over one safetensors file or a sharded set with an index.
public final class SafetensorsSource: TensorSource {
  private struct Location {
    package var file: MappedFile
    package var dataStart: Int
    var entry: Safetensors.Entry
  }

  public private(set) var tensorNames: [String] = []
  private var locations: [String: Location] = [:]
  public private(set) var files: [MappedFile] = []
  public private(set) var metadata: [(String, String)] = []

  /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`, in `directory`.
  public init(directory: String) throws {
    let single = FileSystem.join(directory, "model.safetensors")
    let index = FileSystem.join(directory, "model.safetensors.index.json")
    if FileSystem.exists(index) {
      let json = try JSONParser.parse(try FileSystem.readAll(index), what: "'\(index)'")
      guard let map = json["weight_map"]?.objectValue else {
        throw MoEError.format("'\(index)': no weight_map object")
      }
      var shardNames: [String] = []
      var expected: [String: String] = [:]
      for (tensor, file) in map {
        guard let f = file.stringValue, !f.contains("/"), !f.isEmpty else {
          throw MoEError.format("'\(index)': weight_map entry '\(tensor)' does not name a file in the directory")
        }
        expected[tensor] = f
        if !shardNames.contains(f) { shardNames.append(f) }
      }
      for shard in shardNames { try add(try MappedFile(path: FileSystem.join(directory, shard))) }
      for (tensor, file) in expected {
        guard let loc = locations[tensor] else {
          throw MoEError.notFound("'\(index)' lists tensor '\(tensor)' in '\(file)', but that shard does not contain it")
        }
        guard FileSystem.baseName(of: loc.file.path) == file else {
          throw MoEError.format("'\(index)' lists tensor '\(tensor)' in '\(file)', but it is in '\(FileSystem.baseName(of: loc.file.path))'")
        }
      }
    } else if FileSystem.exists(single) {
      try add(try MappedFile(path: single))
    } else {
      throw MoEError.notFound("'\(directory)' has neither model.safetensors nor model.safetensors.index.json")
    }
  }

  public convenience init(file: String) throws {
    try self.init(file: try MappedFile(path: file))
  }

  /// One mapped file (or bytes held in memory, see `MappedFile(copying:path:)`).
  public init(file: MappedFile) throws {
    try add(file)
  }

  private func add(_ f: MappedFile) throws {
    let path = f.path
    let (entries, dataStart, meta) = try Safetensors.parseHeader(f.bytes, path: path)
    files.append(f)
    if metadata.isEmpty { metadata = meta }
    for e in entries.sorted(by: { $0.begin < $1.begin }) {
      guard locations[e.info.name] == nil else {
        throw MoEError.format("tensor '\(e.info.name)' appears in more than one shard ('\(path)')")
      }
      locations[e.info.name] = Location(file: f, dataStart: dataStart, entry: e)
      tensorNames.append(e.info.name)
    }
  }

  public func info(_ name: String) -> TensorInfo? { locations[name]?.entry.info }

  public var dataBytes: Int { locations.values.reduce(0) { $0 + $1.entry.info.byteCount } }

  public func readFloat(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
    guard let loc = locations[name] else { throw MoEError.notFound("tensor '\(name)' is missing from the checkpoint") }
    guard let base = loc.file.bytes.baseAddress else { return }
    decodeToFloat(loc.entry.info.dtype, src: base + loc.dataStart + loc.entry.begin,
                  count: loc.entry.info.elementCount, dst: dst)
  }

  public func mapped(_ name: String) -> UnsafeRawPointer? {
    guard let loc = locations[name], loc.file.isMapping, let base = loc.file.bytes.baseAddress,
          !loc.entry.info.dtype.isQuantized else { return nil }
    let p = base + loc.dataStart + loc.entry.begin
    return Int(bitPattern: p) % loc.entry.info.dtype.blockBytes == 0 ? p : nil
  }

  public func release(_ name: String) {
    guard let loc = locations[name] else { return }
    loc.file.release(offset: loc.dataStart + loc.entry.begin, count: loc.entry.info.byteCount)
  }
}
