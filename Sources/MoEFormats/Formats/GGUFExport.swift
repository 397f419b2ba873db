import MoESupport
#if canImport(Glibc)
import Glibc
#endif

/// What `GGUFExport.write` writes.
public struct GGUFExportOptions: Sendable {
  /// Storage type of the weight matrices (norms, biases and routers stay F32).
  public var type = DType.f32
  /// Replace an existing output file.
  public var force = false
  public init() {}
}

/// What an export wrote.
public struct GGUFExportReport: Sendable {
  public var bytesWritten: UInt64 = 0
  public var tensorsWritten = 0
  /// Matrices written as F16 because their rows are not whole quantization blocks.
  public var fallbackTensors = 0
  public var seconds = 0.0
}

/// A checkpoint (HF or GGUF; dense Llama / Mistral / Qwen2, Mixtral or
/// Qwen2-MoE) as a GGUF file llama.cpp reads: tensors named by GGUFLayout,
/// Q/K rows permuted for `llama`, experts stacked, the model's hyperparameters
/// and its byte-level BPE tokenizer as metadata. Tensors are converted one at
/// a time, so memory holds one layer's experts at most.
public enum GGUFExport {
  package struct Planned {
    package var name: String
    /// GGUF dims (ne0, the row length, first).
    var dims: [Int]
    package var dtype: DType
    /// The values in row-major order of the reversed dims.
    package var produce: () throws -> [Float]
    package var elementCount: Int { dims.reduce(1, *) }
    package var byteCount: Int { elementCount / dtype.blockElements * dtype.blockBytes }
  }

  public static func write(_ ckpt: Checkpoint, to path: String, options o: GGUFExportOptions) throws -> GGUFExportReport {
    let start = monotonicSeconds()
    let (metadata, plan, fallbacks) = try self.plan(ckpt, options: o)
    let tensors = plan.map { (name: $0.name, dims: $0.dims, dtype: $0.dtype, bytes: $0.byteCount) }
    let header = GGUFOut.header(metadata: metadata, tensors: tensors)
    let total = UInt64(header.count) + UInt64(plan.reduce(0) { GGUFOut.padded($0 + $1.byteCount) })

    try FileSystem.checkReplaceable(path, force: o.force, what: "the output")
    guard path != ckpt.path else { throw MoEError.invalid("the output '\(path)' is the input") }
    try FileSystem.checkFreeSpace(total, in: FileSystem.parent(of: path), for: path)
    var report = GGUFExportReport()
    report.bytesWritten = try FileSystem.writeAtomically(path) { file in
      try file.write(header)
      for t in plan {
        let values = try t.produce()
        guard values.count == t.elementCount else {
          throw MoEError(.internal, "tensor '\(t.name)' produced \(values.count) values for \(t.elementCount)")
        }
        var bytes = [UInt8](repeating: 0, count: GGUFOut.padded(t.byteCount))
        values.withUnsafeBufferPointer { v in
          bytes.withUnsafeMutableBytes { encodeFromFloat(t.dtype, src: v.baseAddress!, count: v.count, dst: $0.baseAddress!) }
        }
        try file.write(bytes)
      }
    }
    report.tensorsWritten = plan.count
    report.fallbackTensors = fallbacks
    report.seconds = monotonicSeconds() - start
    return report
  }

  // MARK: Plan

  static func fileType(_ t: DType) -> UInt32 {
    switch t {
    case .f32: return 0
    case .f16: return 1
    case .q4_0: return 2
    case .q4_1: return 3
    case .q8_0: return 7
    case .bf16: return 32
    }
  }

  package static func plan(_ ckpt: Checkpoint, options o: GGUFExportOptions) throws
    -> (metadata: [(String, GGUFOut)], tensors: [Planned], fallbacks: Int) {
    let d = ckpt.description, src = ckpt.source
    let layout = CheckpointLayouts.gguf(d.architecture), hf = d.hf
    let H = d.hiddenSize, nq = d.numHeads, nkv = d.numKVHeads
    if let rs = d.sourceConfig?["rope_scaling"], !rs.isNull {
      throw MoEError.unsupported("'\(ckpt.path)' has rope_scaling, which this export does not write")
    }
    var fallbacks = 0
    /// Matrices take the requested type; one whose rows are not whole blocks falls back to F16.
    func matrixType(_ rowLength: Int) -> DType {
      guard rowLength % o.type.blockElements == 0 else { fallbacks += 1; return .f16 }
      return o.type
    }
    var plan: [Planned] = []
    /// The source tensor `name` (shape `shape`) as the GGUF tensor of `role`.
    func tensor(_ role: TensorRole, layer: Int?, _ suffix: String = "weight", from name: String, shape: [Int],
                f32: Bool = false, permuteHeads: Int = 0) throws {
      guard let g = GGUFLayout.ggufName(role, layer: layer) else {
        throw MoEError(.internal, "GGUFLayout has no name for \(role)")
      }
      _ = try src.require(name)
      let dims = Array(shape.reversed())
      let dtype: DType = f32 || shape.count == 1 ? .f32 : matrixType(dims[0])
      plan.append(Planned(name: g + "." + suffix, dims: dims, dtype: dtype) {
        let values = try src.readFloat(name, shape: shape)
        src.release(name)
        return permuteHeads > 0 ? permuteRows(values, heads: permuteHeads, rows: shape[0]) : values
      })
    }
    /// A tensor under the model's own HF name.
    func own(_ role: TensorRole, layer: Int? = nil, _ suffix: String = "weight", permuteHeads: Int = 0) throws {
      try tensor(role, layer: layer, suffix, from: hf.name(role, layer: layer ?? 0, suffix),
                 shape: role.shape(in: d, bias: suffix == "bias"), permuteHeads: permuteHeads)
    }
    let permute = layout.permutesQK
    try own(.embedding)
    if let m = d.moe {
      if let dense = m.moeLayers.firstIndex(of: false) {
        throw MoEError.unsupported("GGUF (llama.cpp) models are MoE in every layer; layer \(dense) of '\(ckpt.path)' is dense")
      }
      try layout.checkExport(d, path: ckpt.path)
    }
    for l in 0..<d.numLayers {
      try own(.inputNorm, layer: l)
      try own(.query, layer: l, permuteHeads: permute ? nq : 0)
      try own(.key, layer: l, permuteHeads: permute ? nkv : 0)
      try own(.value, layer: l)
      if src.info(hf.name(.query, layer: l, "bias")) != nil {
        try own(.query, layer: l, "bias", permuteHeads: permute ? nq : 0)
        try own(.key, layer: l, "bias", permuteHeads: permute ? nkv : 0)
        try own(.value, layer: l, "bias")
      }
      try own(.attentionOutput, layer: l)
      try own(.postNorm, layer: l)
      guard let m = d.moe else {
        for role in [TensorRole.ffnGate, .ffnUp, .ffnDown] { try own(role, layer: l) }
        continue
      }
      let E = m.numExperts, F = m.expertIntermediateSize
      let names = CheckpointLayouts.moe(in: src, layer: l)
      try tensor(.router, layer: l, from: names.name(.router, layer: l), shape: [E, H], f32: true)
      let fused = src.info(names.name(.expertsGateUp, layer: l)) != nil
      for (name, proj) in GGUFLayout.expertStacks {
        let rows = proj == .down ? H : F, cols = proj == .down ? F : H
        plan.append(Planned(name: "blk.\(l).\(name).weight", dims: [cols, rows, E], dtype: matrixType(cols)) {
          try expertStack(src, layer: l, names: names, fused: fused, experts: E, ffn: F, hidden: H, proj)
        })
      }
      if layout.hasSharedExpert {
        for role in [TensorRole.sharedGate, .sharedUp, .sharedDown] {
          try tensor(role, layer: l, from: names.name(role, layer: l), shape: role.shape(in: d))
        }
        let gateHF = names.name(.sharedExpertGate, layer: l)
        _ = try src.require(gateHF)
        guard let gate = GGUFLayout.ggufName(.sharedExpertGate, layer: l) else {
          throw MoEError(.internal, "GGUFLayout has no name for the shared expert's gate")
        }
        plan.append(Planned(name: gate + ".weight", dims: [H], dtype: .f32) {
          let v = try src.readFloat(gateHF, shape: [1, H])
          src.release(gateHF)
          // llama.cpp computes this gate's sigmoid as silu(x) / x, NaN at x = 0 exactly; a zero
          // gate (as upcycling writes it) becomes 1e-20 per component, whose sigmoid rounds to
          // 0.5 in f32 like sigmoid(0).
          return v.allSatisfy { $0 == 0 } ? [Float](repeating: 1e-20, count: H) : v
        })
      }
    }
    try own(.finalNorm)
    if !d.tiedEmbeddings {
      try own(.lmHead)
    } else if layout.writesTiedOutput {
      try tensor(.lmHead, layer: nil, from: hf.name(.embedding), shape: d.embedShape)
    }

    var meta: [(String, GGUFOut)] = [
      ("general.architecture", .string(layout.name)),
      ("general.name", .string(FileSystem.baseName(of: ckpt.path))),
      ("general.file_type", .u32(fileType(o.type))),
      ("general.alignment", .u32(UInt32(GGUFOut.alignment))),
    ]
    meta += GGUFLayout.hyperparameters(d, layout)
    meta += try tokenizerMetadata(ckpt, vocabulary: d.vocabSize)
    return (meta, plan, fallbacks)
  }

  /// Whether the checkpoint's MoE routing renormalizes the top-k weights.
  package static func renormalizes(_ d: ModelDescription) throws -> Bool {
    d.hf.routing(d.sourceConfig) != .softmaxTopK
  }

  /// HF rows -> llama.cpp's order: stored row h*d + 2b + a holds HF row h*d + a*(d/2) + b.
  package static func permuteRows(_ w: [Float], heads: Int, rows: Int) -> [Float] {
    let cols = w.count / max(rows, 1), d = rows / heads, half = d / 2
    var out = [Float](repeating: 0, count: w.count)
    for h in 0..<heads {
      for b in 0..<half {
        for a in 0..<2 {
          let stored = h * d + 2 * b + a, hf = h * d + a * half + b
          for c in 0..<cols { out[stored * cols + c] = w[hf * cols + c] }
        }
      }
    }
    return out
  }

  /// Every expert's projection `p`, expert after expert ([E, rows, cols]),
  /// from a source whose MoE tensors have the names of `names`.
  static func expertStack(_ src: TensorSource, layer l: Int, names: any HFLayout, fused: Bool, experts E: Int,
                          ffn F: Int, hidden H: Int, _ p: Projection) throws -> [Float] {
    if fused {
      if p == .down {
        let down = names.name(.expertsDown, layer: l)
        let v = try src.readFloat(down, shape: [E, H, F])
        src.release(down)
        return v
      }
      let gateUp = try src.readFloat(names.name(.expertsGateUp, layer: l), shape: [E, 2 * F, H])
      var out: [Float] = []
      out.reserveCapacity(E * F * H)
      for e in 0..<E {
        let base = e * 2 * F * H + (p == .up ? F * H : 0)
        out += gateUp[base..<(base + F * H)]
      }
      return out
    }
    var out: [Float] = []
    out.reserveCapacity(E * F * H)
    for e in 0..<E {
      let name = names.name(.expert(p), layer: l, expert: e)
      out += try src.readFloat(name, shape: p == .down ? [H, F] : [F, H])
      src.release(name)
    }
    return out
  }

  // MARK: Tokenizer

  /// GGML token types.
  static let normalToken: Int32 = 1, controlToken: Int32 = 3, userDefinedToken: Int32 = 4, unusedToken: Int32 = 5

  /// The tokenizer as GGUF metadata: a GGUF source's tokenizer keys as they
  /// are; an HF source's tokenizer.json (byte-level BPE) converted, its
  /// vocabulary padded with unused `[PADn]` tokens to the model's vocabulary.
  static func tokenizerMetadata(_ ckpt: Checkpoint, vocabulary V: Int) throws -> [(String, GGUFOut)] {
    if let g = ckpt.gguf {
      var out: [(String, GGUFOut)] = []
      for (key, value) in g.metadata where key.hasPrefix("tokenizer.") {
        guard let v = GGUFOut(value) else {
          throw MoEError.unsupported("'\(g.path)': tokenizer metadata '\(key)' has a value this export cannot write")
        }
        out.append((key, v))
      }
      guard !out.isEmpty else { throw MoEError.notFound("'\(g.path)' has no tokenizer metadata; llama.cpp needs one") }
      return out
    }
    guard let dir = ckpt.directory else { throw MoEError.notFound("'\(ckpt.path)' has no tokenizer") }
    let path = FileSystem.join(dir, "tokenizer.json")
    guard FileSystem.isRegularFile(path) else {
      throw MoEError.notFound("'\(dir)' has no tokenizer.json; llama.cpp needs the tokenizer in the GGUF file")
    }
    let what = "'\(path)'"
    let json = try JSONParser.parse(try FileSystem.readAll(path), what: what)
    guard json["model"]?["type"]?.stringValue == "BPE", let vocab = json["model"]?["vocab"]?.objectValue else {
      throw MoEError.unsupported("\(what): only byte-level BPE tokenizers (model type BPE with a vocab) can be written to GGUF")
    }
    var tokens = [String?](repeating: nil, count: V)
    var types = [Int32](repeating: normalToken, count: V)
    func place(_ text: String, _ id: Int, _ type: Int32) throws {
      guard id >= 0, id < V else {
        throw MoEError.shape("\(what): token id \(id) ('\(text)') is outside the model's vocabulary of \(V)")
      }
      tokens[id] = text
      types[id] = type
    }
    for (text, idValue) in vocab {
      guard let id = idValue.intValue else { throw MoEError.format("\(what): the id of '\(text)' is not an integer") }
      try place(text, id, normalToken)
    }
    for a in json["added_tokens"]?.arrayValue ?? [] {
      guard let id = a["id"]?.intValue, let text = a["content"]?.stringValue else { continue }
      try place(text, id, a["special"]?.boolValue == true ? controlToken : userDefinedToken)
    }
    var names: [String] = []
    names.reserveCapacity(V)
    for id in 0..<V {
      if let t = tokens[id] { names.append(t) } else { names.append("[PAD\(id)]"); types[id] = unusedToken }
    }
    var merges: [String] = []
    for m in json["model"]?["merges"]?.arrayValue ?? [] {
      if let s = m.stringValue { merges.append(s) } else if let pair = m.arrayValue, pair.count == 2,
        let a = pair[0].stringValue, let b = pair[1].stringValue { merges.append(a + " " + b) }
    }
    // The pre-tokenizer llama.cpp splits with: digits isolated (SmolLM's) or the GPT-2 regex.
    let tokenizer = try BPETokenizer(tokenizerJSON: json)
    let pre = tokenizer.splitsDigits ? "smollm" : "default"
    var out: [(String, GGUFOut)] = [
      ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string(pre)),
      ("tokenizer.ggml.tokens", .strings(names)), ("tokenizer.ggml.token_type", .i32s(types)),
      ("tokenizer.ggml.merges", .strings(merges)),
    ]
    let loaded = try BPETokenizer.load(checkpoint: ckpt)
    if let bos = loaded.bosTokenId { out.append(("tokenizer.ggml.bos_token_id", .u32(UInt32(bos)))) }
    if let eos = loaded.eosTokenId { out.append(("tokenizer.ggml.eos_token_id", .u32(UInt32(eos)))) }
    out.append(("tokenizer.ggml.add_bos_token", .bool(loaded.addBOS)))
    if let t = loaded.chatTemplate { out.append(("tokenizer.chat_template", .string(t))) }
    return out
  }
}
