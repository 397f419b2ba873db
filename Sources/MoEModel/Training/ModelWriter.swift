// Writing a loaded decoder back to disk as an HF checkpoint directory
// (config.json, safetensors shards, tokenizer and generation files), for
// training checkpoints. Tensors are streamed one at a time from the model's
// own buffers; the directory is written under a temporary name and renamed
// into place (OutputDirectory, shared with the upcycler).

import MoESupport
import MoEFormats
import MoELayer
#if canImport(Glibc)
import Glibc
#endif

/// A file written into a checkpoint directory beside the checkpoint's own
/// (optimizer state, trainer metadata): a plain file name, and what writes its
/// bytes, streamed into the open file so that no copy of a large state is made.
public struct ExtraFile {
  public let name: String
  public let write: (OutputFile) throws -> Void

  public init(_ name: String, write: @escaping (OutputFile) throws -> Void) {
    self.name = name
    self.write = write
  }

  /// A file of these bytes.
  public init(_ name: String, bytes: [UInt8]) {
    self.init(name) { try $0.write(bytes) }
  }
}

extension DecoderModel {
  /// Writes the model (weights in f32, or bf16 when `dtype` is .bf16) as an HF
  /// checkpoint directory at `path` (temporary name + rename; refuses an
  /// existing path unless `force`, and never replaces `source` or a directory
  /// holding it). Tensors take the names of the model's architecture's HF
  /// format (CheckpointLayouts), experts one by one, so a fused-layout source
  /// is written per expert.
  ///
  /// config.json is the source's with its dtype updated (HF sources), or a
  /// Llama/Qwen2 config built from the description (GGUF sources); see HFConfig.make.
  /// `source` is the checkpoint the model was loaded from (an HF directory or a
  /// .gguf file; the model does not record it): its tokenizer and generation
  /// files are copied (HF) or built from its metadata (GGUF, byte-level BPE);
  /// without it only generation_config.json is written, from the bos/eos ids.
  /// `extraFiles` are written into the directory before the
  /// rename (optimizer state, trainer metadata); names are plain file names
  /// that do not collide with the checkpoint's own files.
  /// Not to be called while another thread runs or trains the model.
  public func save(to path: String, dtype: DType = .f32, force: Bool = false,
                   extraFiles: [ExtraFile] = [], source: String? = nil) throws {
    try save(to: path, dtype: dtype, force: force, extraFiles: extraFiles, source: source ?? sourcePath,
             maxShardBytes: ModelWriter.defaultMaxShardBytes)
  }

  /// `save` with a shard size limit: consecutive tensors go into one
  /// safetensors file until the next would pass `maxShardBytes`.
  package func save(to path: String, dtype: DType, force: Bool, extraFiles: [ExtraFile],
                    source: String?, maxShardBytes: Int) throws {
    guard dtype == .f32 || dtype == .bf16 else {
      throw MoEError.unsupported("checkpoint dtype \(dtype.name) is not supported; use f32 or bf16")
    }
    guard maxShardBytes >= 1 << 10 else { throw MoEError.invalid("max shard size is \(maxShardBytes) bytes; it must be at least 1 KiB") }
    try ModelWriter.checkExtraFileNames(extraFiles.map(\.name))
    if let source, !FileSystem.isDirectory(source) && !FileSystem.isRegularFile(source) {
      throw MoEError.notFound("source '\(source)' is neither an HF model directory nor a .gguf file")
    }
    let tensors = try checkpointTensors()
    let config = try HFConfig.make(description, dtype: dtype)
    if let bad = try ModelWriter.firstNonFinite(tensors) {
      throw MoEError.nonFinite("weight '\(bad)' holds NaN or infinite values; refusing to save '\(path)' (nothing was written)")
    }

    // A training run saving over the checkpoint it resumed from: the model
    // holds its weights in memory, so keep the side files in memory too and
    // let the new directory replace the old one.
    var carried: [(String, [UInt8])]? = nil
    var input = source ?? ""
    if force, let source, FileSystem.isDirectory(source), let rs = realPath(source), let rp = realPath(path), rs == rp {
      carried = try CheckpointFiles.sideFileNames.filter { FileSystem.isRegularFile(FileSystem.join(source, $0)) }
        .map { ($0, try FileSystem.readAll(FileSystem.join(source, $0))) }
      input = ""
    }
    let target = try OutputDirectory(path: path, force: force, input: input)
    defer { target.discard() }
    try target.writing { try write(tensors, config: config, dtype: dtype, carried: carried, extraFiles: extraFiles,
                                   source: source, maxShardBytes: maxShardBytes, into: target) }
  }

  /// The checkpoint's files into the target's temporary directory, then the commit.
  private func write(_ tensors: [ModelWriter.Tensor], config: JSON, dtype: DType, carried: [(String, [UInt8])]?,
                     extraFiles: [ExtraFile], source: String?, maxShardBytes: Int,
                     into target: OutputDirectory) throws {
    try ModelWriter.writeShards(tensors, dtype: dtype, into: target.temporary, maxShardBytes: maxShardBytes)
    try CheckpointFiles.writeJSON(config, FileSystem.join(target.temporary, "config.json"))
    if let carried {
      for (name, bytes) in carried {
        let out = try OutputFile(path: FileSystem.join(target.temporary, name))
        try out.write(bytes)
        try out.close()
      }
      try writeSideFiles(into: target.temporary, source: nil)
    } else {
      try writeSideFiles(into: target.temporary, source: source)
    }
    for extra in extraFiles {
      let file = FileSystem.join(target.temporary, extra.name)
      guard !FileSystem.exists(file) else {
        throw MoEError.invalid("extra file '\(extra.name)' would replace a file of the checkpoint")
      }
      let out = try OutputFile(path: file)
      try extra.write(out)
      try out.close()
    }
    try target.commit()
  }

  // MARK: - Tensors

  /// Every tensor of the checkpoint, in file order, with how to stream it.
  func checkpointTensors() throws -> [ModelWriter.Tensor] {
    let d = description
    let H = d.hiddenSize, hd = d.headDim, nq = d.numHeads, nkv = d.numKVHeads
    var out: [ModelWriter.Tensor] = []
    func dense(_ name: String, _ w: DenseWeight, rows: Range<Int>) {
      out.append(ModelWriter.Tensor(name: name, shape: [rows.count, w.cols]) { try $0.write(w, rows: rows) })
    }
    func vector(_ name: String, _ b: AlignedBuffer, offset: Int = 0, count: Int) {
      out.append(ModelWriter.Tensor(name: name, shape: [count]) { try $0.write(floats: b.pointer + offset, count: count) })
    }
    func moeWeight(_ name: String, _ moe: MoELayer, _ kind: LayerWeight, expert: Int, shape: [Int]) {
      out.append(ModelWriter.Tensor(name: name, shape: shape) { w in
        let n = shape.reduce(1, *)
        var values = [Float](repeating: 0, count: n)
        try values.withUnsafeMutableBufferPointer { try moe.getWeight(kind, expert: expert, out: $0.baseAddress!, count: n) }
        try values.withUnsafeBufferPointer { try w.write(floats: $0.baseAddress!, count: n) }
      })
    }

    let hf = d.hf
    dense(hf.name(.embedding), embedding, rows: 0..<embedding.rows)
    for (l, layer) in layers.enumerated() {
      func name(_ role: TensorRole, _ suffix: String = "weight") -> String { hf.name(role, layer: l, suffix) }
      vector(name(.inputNorm), layer.inputNorm, count: H)
      // qkv rows: q [nq d], then k [nkv d], then v [nkv d].
      let q = 0..<(nq * hd), k = q.upperBound..<(q.upperBound + nkv * hd), v = k.upperBound..<(k.upperBound + nkv * hd)
      guard v.upperBound == layer.qkv.rows else {
        throw MoEError(.internal, "layer \(l): q/k/v weight has \(layer.qkv.rows) rows, expected \(v.upperBound)")
      }
      let qkv: [(TensorRole, Range<Int>)] = [(.query, q), (.key, k), (.value, v)]
      for (role, rows) in qkv { dense(name(role), layer.qkv, rows: rows) }
      if let bias = layer.qkv.bias {
        for (role, rows) in qkv { vector(name(role, "bias"), bias, offset: rows.lowerBound, count: rows.count) }
      }
      dense(name(.attentionOutput), layer.output, rows: 0..<layer.output.rows)
      vector(name(.postNorm), layer.postNorm, count: H)
      if let moe = layer.moe {
        let c = moe.config
        guard hf.path(.router) != nil else {
          throw MoEError.unsupported("layer \(l) is MoE but the architecture \(d.architecture.rawValue) has no MoE tensor names")
        }
        guard c.sharedFFN == 0 || hf.hasSharedExpert else {
          throw MoEError.unsupported("layer \(l) has a shared expert, which the \(d.architecture.rawValue) format cannot hold")
        }
        // The layer's own sizes.
        var shapes = d
        shapes.moe = MoEDescription(numExperts: c.experts, topK: c.topK, expertIntermediateSize: c.ffn,
                                    sharedExpertIntermediateSize: c.sharedFFN, moeLayers: [])
        for t in hf.moeTensors(shapes, layer: l) {
          guard let kind = LayerWeight(t.role) else { continue }
          moeWeight(t.name, moe, kind, expert: t.expert, shape: t.shape)
        }
      } else if let gateUp = layer.gateUp, let down = layer.down {
        // gateUp rows: gate [F], then up [F].
        let F = gateUp.rows / 2
        dense(name(.ffnGate), gateUp, rows: 0..<F)
        dense(name(.ffnUp), gateUp, rows: F..<(2 * F))
        dense(name(.ffnDown), down, rows: 0..<down.rows)
      } else {
        throw MoEError(.internal, "layer \(l) has neither a dense nor an MoE feed-forward")
      }
    }
    vector(hf.name(.finalNorm), finalNorm, count: H)
    if !d.tiedEmbeddings { dense(hf.name(.lmHead), lmHead, rows: 0..<lmHead.rows) }
    return out
  }

  /// The checkpoint name of the first weight tensor holding a NaN or an
  /// infinity (in checkpoint order); nil when every weight is finite.
  public func firstNonFiniteWeight() throws -> String? {
    try ModelWriter.firstNonFinite(try checkpointTensors())
  }

  /// Says why outputs computed from the weights are not finite: the first
  /// weight that is not, or that the weights are finite and the computation overflowed.
  func nonFiniteCause() -> String {
    if let bad = try? firstNonFiniteWeight() { return "weight '\(bad)' holds NaN or infinite values" }
    return "every weight is finite, so the activations overflowed"
  }

  // MARK: - Tokenizer and generation files

  /// Copies the tokenizer and generation files of an HF `source`, or builds
  /// them from a GGUF `source`'s metadata (byte-level BPE only, as the upcycler
  /// does); writes generation_config.json from the bos/eos ids if none came.
  package func writeSideFiles(into dir: String, source: String?) throws {
    var directory: String? = nil, gguf: GGUFFile? = nil
    if let source {
      if FileSystem.isDirectory(source) {
        directory = source
      } else if FileSystem.isRegularFile(source) {
        gguf = try GGUFFile(path: source)
      } else {
        throw MoEError.notFound("source '\(source)' is neither an HF model directory nor a .gguf file")
      }
    }
    try CheckpointFiles.writeSideFiles(into: dir, directory: directory, gguf: gguf, description: description)
  }
}

/// Pieces of `DecoderModel.save`.
package enum ModelWriter {
  /// Same default as the upcycler's shards.
  static let defaultMaxShardBytes = 4 << 30


  /// One tensor of the checkpoint: its name, shape, and how to stream its data.
  package struct Tensor {
    package var name: String
    package var shape: [Int]
    var emit: (TensorStream) throws -> Void

    package init(name: String, shape: [Int], emit: @escaping (TensorStream) throws -> Void) {
      self.name = name
      self.shape = shape
      self.emit = emit
    }
  }

  /// The name of the first tensor whose values include a NaN or an infinity;
  /// nil when all are finite. Streams every tensor through a checking stream
  /// (no file), so it sees exactly what a save would write.
  package static func firstNonFinite(_ tensors: [Tensor]) throws -> String? {
    let stream = TensorStream(dtype: .f32, checking: true)
    for t in tensors {
      try t.emit(stream)
      if stream.sawNonFinite { return t.name }
    }
    return nil
  }

  /// Extra file names are plain names (no path) that the checkpoint does not use itself.
  static func checkExtraFileNames(_ names: [String]) throws {
    var seen = Set<String>()
    for name in names {
      guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.utf8.contains(0) else {
        throw MoEError.invalid("extra file name '\(name)' is not a plain file name")
      }
      let reserved = name == "config.json" || name == "model.safetensors" || name == "model.safetensors.index.json"
        || (name.hasPrefix("model-") && name.hasSuffix(".safetensors")) || CheckpointFiles.sideFileNames.contains(name)
      guard !reserved else { throw MoEError.invalid("extra file name '\(name)' is one of the checkpoint's own files") }
      guard seen.insert(name).inserted else { throw MoEError.invalid("extra file name '\(name)' appears twice") }
    }
  }

  /// Writes `tensors` as model.safetensors, or as numbered shards of at most
  /// `maxShardBytes` (a larger tensor gets a shard of its own) with
  /// model.safetensors.index.json.
  package static func writeShards(_ tensors: [Tensor], dtype: DType, into dir: String, maxShardBytes: Int) throws {
    func bytes(_ t: Tensor) -> Int { t.shape.reduce(1, *) * dtype.elementBytes }
    let shards = CheckpointFiles.shards(tensors.map(bytes), maxBytes: UInt64(maxShardBytes))
    let stream = TensorStream(dtype: dtype)
    var weightMap: [(String, JSON)] = []
    for (s, indices) in shards.enumerated() {
      let fileName = CheckpointFiles.shardFileName(s, of: shards.count)
      let file = try OutputFile(path: FileSystem.join(dir, fileName))
      try file.write(Safetensors.headerBytes(tensors: indices.map { (tensors[$0].name, dtype, tensors[$0].shape) },
                                             metadata: [("format", "pt")]))
      stream.file = file
      for i in indices {
        let t = tensors[i]
        let before = file.bytesWritten
        try t.emit(stream)
        guard file.bytesWritten - before == UInt64(bytes(t)) else {
          throw MoEError(.internal, "tensor '\(t.name)' wrote \(file.bytesWritten - before) bytes, expected \(bytes(t))")
        }
        weightMap.append((t.name, .string(fileName)))
      }
      stream.file = nil
      try file.close()
    }
    if shards.count > 1 {
      try CheckpointFiles.writeJSON(CheckpointFiles.index(totalBytes: tensors.reduce(0) { $0 + bytes($1) }, weightMap: weightMap),
                    FileSystem.join(dir, "model.safetensors.index.json"))
    }
  }
}

/// Streams tensor data into the open safetensors file in the checkpoint dtype
/// (f32 or bf16), through a small conversion buffer.
/// A checking stream writes nothing: it records whether any value was NaN or infinite.
package final class TensorStream {
  package let dtype: DType
  package var file: OutputFile?
  let checking: Bool
  private(set) var sawNonFinite = false
  private let chunk = 1 << 16
  private let widened: UnsafeMutablePointer<Float>   // [chunk]
  private let encoded: UnsafeMutableRawPointer        // [chunk] elements of dtype

  init(dtype: DType, checking: Bool = false) {
    self.dtype = dtype
    self.checking = checking
    widened = .allocate(capacity: chunk)
    encoded = .allocate(byteCount: chunk * 4, alignment: 64)
  }

  deinit {
    widened.deallocate()
    encoded.deallocate()
  }

  private func output() throws -> OutputFile {
    guard let file else { throw MoEError(.internal, "no safetensors file is open") }
    return file
  }

  /// f32 values, converted to the checkpoint dtype.
  package func write(floats src: UnsafePointer<Float>, count: Int) throws {
    if checking {
      if firstNonFinite(src, count) != nil { sawNonFinite = true }
      return
    }
    let out = try output()
    var i = 0
    while i < count {
      let n = min(chunk, count - i)
      encodeFromFloat(dtype, src: src + i, count: n, dst: encoded)
      try out.write(UnsafeRawBufferPointer(start: encoded, count: n * dtype.elementBytes))
      i += n
    }
  }

  /// bf16 values: copied as they are into a bf16 checkpoint, widened otherwise.
  package func write(bf16 src: UnsafePointer<UInt16>, count: Int) throws {
    if checking {
      if firstNonFiniteBF16(src, count) != nil { sawNonFinite = true }
      return
    }
    let out = try output()
    var i = 0
    while i < count {
      let n = min(chunk, count - i)
      if dtype == .bf16 {
        let dst = encoded.assumingMemoryBound(to: UInt16.self)
        for j in 0..<n { dst[j] = src[i + j].littleEndian }
        try out.write(UnsafeRawBufferPointer(start: encoded, count: 2 * n))
      } else {
        widenBF16(src + i, widened, count: n)
        encodeFromFloat(dtype, src: widened, count: n, dst: encoded)
        try out.write(UnsafeRawBufferPointer(start: encoded, count: n * dtype.elementBytes))
      }
      i += n
    }
  }

  /// Rows `rows` of a dense weight.
  package func write(_ w: DenseWeight, rows: Range<Int>) throws {
    let first = rows.lowerBound * w.cols, count = rows.count * w.cols
    if w.dtype == .bf16 {
      try write(bf16: UnsafeRawPointer(w.storage.pointer).assumingMemoryBound(to: UInt16.self) + first, count: count)
    } else {
      try write(floats: w.storage.pointer + first, count: count)
    }
  }
}
