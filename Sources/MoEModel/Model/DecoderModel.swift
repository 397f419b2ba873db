// A Llama-family decoder (Llama, Mistral, Qwen2, SmolLM; Mixtral and Qwen2-MoE
// when layers are MoE): embedding, RMSNorm, rotary embeddings, grouped-query
// causal attention with a KV cache, dense SwiGLU or MoE feed-forward, final
// norm, tied or untied LM head.

import MoESupport
import MoEFormats
import MoERuntime
import MoELayer
#if canImport(Glibc)
import Glibc
#endif
import MoEKernelCode

/// How to load a model.
public struct ModelLoadOptions: Sendable {
  /// Storage of matrix weights: nil = bf16 when the checkpoint stores
  /// bf16/f16, else f32 (quantized GGUF tensors are dequantized to f32).
  public var weightDType: DType? = nil
  /// NUMA placement of MoE layers (nil = the runtime's default).
  public var placement: PlacementPolicy? = nil
  /// Longest sequence the KV cache may hold (0 = the model's context length).
  public var maxContext: Int = 0
  /// Read plain MoE expert matrices stored as the layers hold them in place
  /// from the checkpoint file's mapping (the page cache), not from a copy:
  /// loading then costs no memory of its own and processes that load the
  /// same file share it. Changing a weight (training) copies the layer's
  /// experts first.
  public var mapExperts = true

  public init() {}
}

package final class DecoderLayer {
  package let inputNorm: AlignedBuffer       // [H]
  package let postNorm: AlignedBuffer        // [H]
  package let qkv: DenseWeight               // [(nq + 2 nkv) d, H], with bias for Qwen2
  package let output: DenseWeight            // [H, nq d]
  package let gateUp: DenseWeight?           // dense FFN: [2F, H] (gate rows, then up rows)
  package let down: DenseWeight?             // [H, F]
  package let moe: MoELayer?

  init(inputNorm: AlignedBuffer, postNorm: AlignedBuffer, qkv: DenseWeight, output: DenseWeight,
       gateUp: DenseWeight?, down: DenseWeight?, moe: MoELayer?) {
    self.inputNorm = inputNorm
    self.postNorm = postNorm
    self.qkv = qkv
    self.output = output
    self.gateUp = gateUp
    self.down = down
    self.moe = moe
  }
}

public final class DecoderModel: @unchecked Sendable {
  public let description: ModelDescription
  public let runtime: Runtime
  /// The checkpoint the model was loaded from (HF directory or .gguf file).
  public let sourcePath: String
  /// nil when the checkpoint has no tokenizer, or one this library cannot
  /// run (logits and token-id evaluation still work).
  public let tokenizer: BPETokenizer?
  let tokenizerProblem: MoEError?
  public let contextLength: Int
  /// Storage of the decoder layers' matrices (the embedding and LM head may
  /// differ: a quantized GGUF's own choice).
  public let weightDType: DType
  /// Storage of the KV cache: f32 with f32 layers; bf16 with bf16 or quantized
  /// layers, which have already traded precision for memory traffic (decode
  /// reads the whole cache for every token; bf16 halves it and keeps f32's range).
  public let kvCacheDType: DType
  package let layers: [DecoderLayer]
  package let embedding: DenseWeight          // [V, H]
  package let lmHead: DenseWeight             // [V, H] (the embedding when tied)
  package let finalNorm: AlignedBuffer
  package let rotary: RotaryTable
  let workerScratch: [AlignedBuffer]
  let workerScratchFloats: Int
  package let scratch = ScratchSet()
  /// Activations and work buffers of training passes.
  let trainScratch = ScratchSet()
  /// The MoE layers' buffers while training with recompute (one layer's worth).
  package let sharedMoEScratch = ScratchSet()
  /// Per layer K and V caches: [capacity, nkv * d] of kvCacheDType.
  var keyCache: [AlignedBuffer] = []
  var valueCache: [AlignedBuffer] = []
  var cacheCapacity = 0
  /// Tokens per expert summed over forwards since the last reset, per MoE layer.
  public internal(set) var routerCounts: [[Int]]
  public internal(set) var routerBalanceSum: Double = 0
  public internal(set) var routerForwards = 0
  /// Sees every dense FFN's activations during inference forwards (calibration).
  package var ffnObserver: FFNObserver?

  public init(checkpoint ckpt: Checkpoint, runtime: Runtime, options: ModelLoadOptions = ModelLoadOptions()) throws {
    let d = ckpt.description
    description = d
    sourcePath = ckpt.path
    self.runtime = runtime
    guard d.numHeads % max(d.numKVHeads, 1) == 0 else {
      throw MoEError.unsupported("\(d.numHeads) attention heads are not a multiple of \(d.numKVHeads) KV heads")
    }
    guard d.headDim % 2 == 0 else { throw MoEError.unsupported("head_dim \(d.headDim) is odd; rotary embeddings need pairs") }
    if let rs = d.sourceConfig?["rope_scaling"], !rs.isNull {
      throw MoEError.unsupported("rope_scaling \(rs.serialized()) is not supported")
    }
    // transformers 5 writes RoPE as rope_parameters alone; only plain RoPE is run here.
    if let rp = d.sourceConfig?["rope_parameters"], rp.objectValue != nil,
       let type = rp["rope_type"]?.stringValue ?? rp["type"]?.stringValue, type != "default" {
      throw MoEError.unsupported("rope_parameters of type '\(type)' (\(rp.serialized())) is not supported; only plain RoPE is")
    }
    guard options.maxContext >= 0 else { throw MoEError.invalid("max_context is \(options.maxContext)") }
    contextLength = options.maxContext > 0 ? min(options.maxContext, max(d.maxPositionEmbeddings, 1)) : max(d.maxPositionEmbeddings, 1)
    // A missing or unsupported tokenizer leaves the model usable with token ids.
    do {
      tokenizer = try BPETokenizer.load(checkpoint: ckpt)
      tokenizerProblem = nil
    } catch let e as MoEError where e.kind == .notFound || e.kind == .unsupported {
      tokenizer = nil
      tokenizerProblem = e
    }
    if let tokenizer, tokenizer.vocabSize > d.vocabSize {
      throw MoEError.format("the tokenizer has \(tokenizer.vocabSize) tokens but the model's vocabulary is \(d.vocabSize)")
    }
    let src = ckpt.source
    let storedHalf = src.tensorNames.contains { n in
      guard !n.hasSuffix(".bias"), CheckpointLayouts.role(ofHF: n)?.isProjection == true else { return false }
      let t = src.info(n)?.dtype
      return t == .bf16 || t == .f16
    }
    guard options.weightDType != .f16 else {
      throw MoEError.unsupported("weight dtype F16: use f32, bf16, q8_0, q4_0 or q4_1")
    }
    // Plain matrices of the checkpoint's choice: bf16 where it stores bf16 or f16.
    let plain: DType = options.weightDType.map { $0.isQuantized ? .f32 : $0 } ?? (storedHalf ? .bf16 : .f32)
    let H = d.hiddenSize, hd = d.headDim, nq = d.numHeads, nkv = d.numKVHeads, V = d.vocabSize

    func read(_ name: String, _ shape: [Int]) throws -> [Float] { try src.readFloat(name, shape: shape) }
    func vector(_ name: String, _ n: Int) throws -> AlignedBuffer {
      let v = try read(name, [n])
      let b = try AlignedBuffer(floats: n, what: name)
      v.withUnsafeBufferPointer { b.pointer.update(from: $0.baseAddress!, count: n) }
      return b
    }
    /// How a matrix made of `names` (stacked rows of `cols` columns) is held:
    /// the requested type; by default a quantized type the checkpoint stores
    /// all of them in (Q8_0 when they mix quantized types), else `plain`.
    /// Quantized storage needs whole blocks of 32 columns; others stay plain.
    func storage(_ names: [String], cols: Int) -> DType {
      let stored = names.map { src.info($0)?.dtype ?? .f32 }
      var chosen = options.weightDType ?? plain
      if options.weightDType == nil, let q = stored.first(where: \.isQuantized) {
        chosen = stored.allSatisfy { $0 == q } ? q : .q8_0
      }
      return chosen.isQuantized && cols % 32 != 0 ? plain : chosen
    }
    let quantized = options.weightDType?.isQuantized ?? src.tensorNames.contains { src.info($0)?.dtype.isQuantized == true }
    /// How MoE layer l's experts are held: as `storage` picks for all their
    /// matrices (stored blocks kept bit for bit), when H and the experts'
    /// sizes are whole blocks of 32; otherwise bf16 where the request or the
    /// checkpoint is quantized, else `plain`.
    func expertStorage(layer l: Int, _ m: MoEDescription) -> DType {
      let names = CheckpointLayouts.moe(in: src, layer: l)
      var matrices = (0..<m.numExperts).flatMap { e in Projection.allCases.map { names.name(.expert($0), layer: l, expert: e) } }
      if m.sharedExpertIntermediateSize > 0 {
        matrices += [LayerWeight.sharedGate, .sharedUp, .sharedDown].map { names.name(TensorRole($0), layer: l) }
      }
      let whole = [H, m.expertIntermediateSize, m.sharedExpertIntermediateSize].allSatisfy { $0 % 32 == 0 }
      let type = storage(matrices, cols: whole ? 32 : 1)
      if type.isQuantized { return type }
      return plain == .f32 && quantized ? .bf16 : plain
    }
    let arena = WeightArena { [runtime] p, n in runtime.zero(p, floats: n) }
    // Where bf16 weights are read as f32 before rounding (one part at a time).
    let staging = ScratchSet()
    func dense(_ names: [String], rows: [Int], cols: Int, biases: [String]? = nil) throws -> DenseWeight {
      var bias: [Float]? = nil
      if let biases { bias = []; for (n, r) in zip(biases, rows) { bias! += try read(n, [r]) } }
      let total = rows.reduce(0, +), type = storage(names, cols: cols)
      for (n, r) in zip(names, rows) {
        let info = try src.require(n)
        guard info.shape == [r, cols] else { throw MoEError.shape("tensor '\(n)' has shape \(info.shape), expected \([r, cols])") }
      }
      if type.isQuantized {
        // Stored blocks of this type are kept bit for bit; others are quantized here.
        let perRow = cols / 32 * type.blockBytes
        var blocks = [UInt8](repeating: 0, count: total * perRow)
        var row0 = 0
        for (n, r) in zip(names, rows) {
          let info = try src.require(n)
          try blocks.withUnsafeMutableBytes { b in
            let dst = b.baseAddress! + row0 * perRow
            if info.dtype == type {
              try src.readStored(n, into: dst)
            } else {
              let values = try read(n, [r, cols])
              values.withUnsafeBufferPointer { v in
                for i in 0..<r { encodeFromFloat(type, src: v.baseAddress! + i * cols, count: cols, dst: dst + i * perRow) }
              }
            }
          }
          src.release(n)
          row0 += r
        }
        return try blocks.withUnsafeBytes { b in
          try (bias ?? []).withUnsafeBufferPointer { bp in
            try DenseWeight(rows: total, cols: cols, quantized: type, blocks: b.baseAddress!,
                            bias: bias == nil ? nil : bp.baseAddress, what: names[0], arena: arena)
          }
        }
      }
      return try (bias ?? []).withUnsafeBufferPointer { b in
        try DenseWeight(rows: total, cols: cols, dtype: type, parts: rows, bias: bias == nil ? nil : b.baseAddress,
                        what: names[0], arena: arena, staging: staging) { i, dst in
          try src.readFloat(names[i], into: dst)
          src.release(names[i])
        }
      }
    }

    let hf = d.hf
    embedding = try dense([hf.name(.embedding)], rows: [V], cols: H)
    lmHead = d.tiedEmbeddings ? embedding : try dense([hf.name(.lmHead)], rows: [V], cols: H)
    finalNorm = try vector(hf.name(.finalNorm), H)
    var built: [DecoderLayer] = []
    var counts: [[Int]] = []
    for l in 0..<d.numLayers {
      let qkvRoles: [TensorRole] = [.query, .key, .value]
      let qkv = try dense(qkvRoles.map { hf.name($0, layer: l) },
                          rows: [nq * hd, nkv * hd, nkv * hd], cols: H,
                          biases: d.qkvBias ? qkvRoles.map { hf.name($0, layer: l, "bias") } : nil)
      let o = try dense([hf.name(.attentionOutput, layer: l)], rows: [H], cols: nq * hd)
      var gateUp: DenseWeight? = nil, down: DenseWeight? = nil, moe: MoELayer? = nil
      if let m = d.moe, m.moeLayers[l] {
        moe = try MoELayer.load(checkpoint: ckpt, layer: l, runtime: runtime, map: options.mapExperts) { c in
          c.storage = expertStorage(layer: l, m)
          c.placement = options.placement
        }
        counts.append([Int](repeating: 0, count: m.numExperts))
      } else {
        let n = hf.denseFFN(layer: l)
        let F = d.intermediateSize
        gateUp = try dense([n.gate, n.up], rows: [F, F], cols: H)
        down = try dense([n.down], rows: [H], cols: F)
        counts.append([])
      }
      built.append(DecoderLayer(inputNorm: try vector(hf.name(.inputNorm, layer: l), H),
                                postNorm: try vector(hf.name(.postNorm, layer: l), H),
                                qkv: qkv, output: o, gateUp: gateUp, down: down, moe: moe))
    }
    layers = built
    weightDType = built.first?.qkv.dtype ?? embedding.dtype
    kvCacheDType = weightDType == .f32 ? .f32 : .bf16
    routerCounts = counts
    rotary = RotaryTable(headDim: hd, base: d.ropeTheta)
    let widest = max(H, nq * hd, d.intermediateSize, d.moe?.expertIntermediateSize ?? 0)
    workerScratchFloats = 128 * widest
    workerScratch = try (0..<runtime.workerCount).map { _ in try AlignedBuffer(floats: 128 * widest, what: "model scratch") }
  }

  public convenience init(path: String, runtime: Runtime, options: ModelLoadOptions = ModelLoadOptions()) throws {
    try self.init(checkpoint: try Checkpoint(path: path), runtime: runtime, options: options)
  }

  public var vocabSize: Int { description.vocabSize }

  /// The tokenizer, or an error saying the checkpoint has none.
  public func requireTokenizer() throws -> BPETokenizer {
    guard let tokenizer else {
      let why = tokenizerProblem?.message ?? "no tokenizer"
      throw MoEError(tokenizerProblem?.kind ?? .notFound, "the model's tokenizer cannot be used (\(why)); pass token ids")
    }
    return tokenizer
  }
  /// Whether every matrix is held in f32 (what training needs).
  var matricesAreF32: Bool {
    embedding.dtype == .f32 && lmHead.dtype == .f32 && layers.allSatisfy { l in
      [l.qkv, l.output, l.gateUp, l.down].allSatisfy { ($0?.dtype ?? .f32) == .f32 } && (l.moe?.config.storage ?? .f32) == .f32
    }
  }
  public var numMoELayers: Int { layers.filter { $0.moe != nil }.count }

  /// Bytes of weights one decoded token reads: every dense matrix, the active
  /// experts of each MoE layer (top-k, plus the shared expert and router),
  /// one embedding row and the whole LM head.
  public var weightBytesPerToken: Int {
    var total = embedding.rowBytes + lmHead.bytes
    for l in layers {
      total += l.qkv.bytes + l.output.bytes + (l.gateUp?.bytes ?? 0) + (l.down?.bytes ?? 0)
      if let m = l.moe {
        let c = m.config, t = c.storage
        func expert(_ f: Int) -> Int { 2 * f * t.rowBytes(cols: c.hidden) + c.hidden * t.rowBytes(cols: f) }
        total += c.experts * c.hidden * 4 + c.topK * expert(c.ffn)
        if c.sharedFFN > 0 { total += expert(c.sharedFFN) + c.hidden * 4 }
      }
    }
    return total
  }

  /// Bytes of all weights held (experts read from the checkpoint's mapping too).
  public var weightBytes: Int {
    var total = embedding.bytes + (lmHead === embedding ? 0 : lmHead.bytes)
    for l in layers {
      total += l.qkv.bytes + l.output.bytes + (l.gateUp?.bytes ?? 0) + (l.down?.bytes ?? 0)
      total += (l.moe?.ownedBytes ?? 0) + (l.moe?.mappedBytes ?? 0)
    }
    return total
  }

  public func resetRouterStatistics() {
    for i in routerCounts.indices { routerCounts[i] = [Int](repeating: 0, count: routerCounts[i].count) }
    routerBalanceSum = 0
    routerForwards = 0
  }

  // MARK: - KV cache

  func ensureCache(_ needed: Int) throws {
    guard needed > cacheCapacity else { return }
    let kvWidth = description.numKVHeads * description.headDim
    let capacity = min(contextLength, max(needed, cacheCapacity * 2, 256))
    // The cache grows with the sequence; refuse one that cannot fit in memory
    // rather than let the machine swap or kill the process.
    let elementBytes = kvCacheDType.elementBytes
    func floats(_ positions: Int) -> Int { (positions * kvWidth * elementBytes + 3) / 4 }
    let bytes = Double(capacity) * Double(kvWidth * elementBytes) * 2 * Double(layers.count)
    let memory = physicalMemoryBytes()
    guard memory == 0 || bytes <= Double(memory) else {
      throw MoEError(.outOfMemory, "a KV cache for \(capacity) positions needs \(Int(bytes / Double(1 << 20))) MiB, more than this machine's \(memory >> 20) MiB of memory; use shorter sequences or set max_context")
    }
    var keys: [AlignedBuffer] = [], values: [AlignedBuffer] = []
    for l in layers.indices {
      let k = try AlignedBuffer(floats: floats(capacity), what: "key cache")
      let v = try AlignedBuffer(floats: floats(capacity), what: "value cache")
      if cacheCapacity > 0 {
        k.pointer.update(from: keyCache[l].pointer, count: floats(cacheCapacity))
        v.pointer.update(from: valueCache[l].pointer, count: floats(cacheCapacity))
      }
      keys.append(k)
      values.append(v)
    }
    keyCache = keys
    valueCache = values
    cacheCapacity = capacity
  }

  // MARK: - Forward

  /// Runs `tokens` at positions start ..< start + T (the cache holds 0 ..< start),
  /// appending their keys and values. Returns the final hidden states [T, H]
  /// after the final norm (valid until the next call).
  package func forwardHidden(_ tokens: UnsafeBufferPointer<Int32>, start: Int) throws -> UnsafeMutablePointer<Float> {
    let d = description
    let T = tokens.count, H = d.hiddenSize
    guard start >= 0, start + T <= contextLength else {
      throw MoEError.invalid("\(start + T) positions exceed the context length \(contextLength)")
    }
    for t in tokens where t < 0 || Int(t) >= d.vocabSize {
      throw MoEError.invalid("token id \(t) is outside the vocabulary (0..<\(d.vocabSize))")
    }
    try ensureCache(start + T)
    rotary.ensure(start + T)
    Runtime.keepBLASSingleThreaded()
    let x = try scratch.get("x", floats: T * H)
    let hidden = try scratch.get("final_hidden", floats: T * H)
    for t in 0..<T { embedding.row(Int(tokens[t]), into: x + t * H) }
    let batch = TokenBatch(sequences: 1, length: T, start: start, cached: true)
    for l in layers.indices { try layerForward(l, x: x, batch: batch, training: false, keep: nil, buffers: scratch) }
    rmsNormRows(x, finalNorm.pointer, hidden, rows: T, eps: Float(d.rmsNormEps))
    return hidden
  }

  /// Logits [rows.count, V] of hidden rows `rows` of `hidden` [T, H] (T:
  /// `callTokens`, default rows.count: every chunk of a call computes alike).
  package func logits(hidden: UnsafePointer<Float>, rows: Range<Int>, into out: UnsafeMutablePointer<Float>,
                      compute: ComputePrecision = .f32, callTokens: Int? = nil) {
    let H = description.hiddenSize
    runtime.linear(hidden + rows.lowerBound * H, tokens: rows.count, lmHead, out,
                   scratch: workerScratch, scratchFloats: workerScratchFloats, compute: compute,
                   callTokens: callTokens)
  }

  /// Logits [T, V] for `tokens` at positions 0 ..< T (a fresh sequence).
  public func logits(tokens: [Int32], into out: UnsafeMutablePointer<Float>) throws {
    guard !tokens.isEmpty else { return }
    let hidden = try tokens.withUnsafeBufferPointer { try forwardHidden($0, start: 0) }
    let chunk = 64
    var r0 = 0
    while r0 < tokens.count {
      let r1 = min(tokens.count, r0 + chunk)
      logits(hidden: hidden, rows: r0..<r1, into: out + r0 * vocabSize, callTokens: tokens.count)
      if let bad = firstNonFinite(out + r0 * vocabSize, (r1 - r0) * vocabSize) {
        let row = r0 + bad / vocabSize
        throw MoEError.nonFinite("logits: the logits of position \(row) are not finite (NaN or infinite): \(nonFiniteCause())")
      }
      r0 = r1
    }
  }
}
