// Upcycle options: validation and planning of an upcycle (experts, top-k,
// method, ratio, granularity, layer selection, format, dtype, ...) against
// small dense models held in memory, then everything short of writing files:
// the output config (read back with the HF config reader), shard grouping,
// and producing the planned tensors (router, experts, shared expert).
//
// Input layout: model index, then the option fields in the order they are
// read below (little-endian), then the `layers` text.

@testable import MoESupport
@testable import MoEFormats
@testable import MoEUpcycling

/// A tiny dense GGUF model in memory (f32, deterministic weights).
func tinyModel(arch: String, layers: Int, hidden: Int, heads: Int, kvHeads: Int, headDim: Int?,
               ffn: Int, vocab: Int, tied: Bool, biases: Bool) -> Checkpoint {
  let hd = headDim ?? hidden / heads
  var metadata: [(String, GGUFValue)] = [
    ("general.architecture", .string(arch)),
    ("\(arch).block_count", .uint(UInt64(layers))),
    ("\(arch).embedding_length", .uint(UInt64(hidden))),
    ("\(arch).feed_forward_length", .uint(UInt64(ffn))),
    ("\(arch).attention.head_count", .uint(UInt64(heads))),
    ("\(arch).attention.head_count_kv", .uint(UInt64(kvHeads))),
    ("\(arch).context_length", .uint(64)),
  ]
  if let headDim { metadata.append(("\(arch).attention.key_length", .uint(UInt64(headDim)))) }
  var seed = 1
  func values(_ shape: [Int]) -> [Float] {
    (0..<shape.reduce(1, *)).map { _ in seed += 1; return Float((seed * 7919) % 201 - 100) / 400 }
  }
  var tensors: [(String, [Int], [Float])] = []
  func add(_ name: String, _ shape: [Int]) { tensors.append((name, shape, values(shape))) }
  add("token_embd.weight", [vocab, hidden])
  add("output_norm.weight", [hidden])
  if !tied { add("output.weight", [vocab, hidden]) }
  for l in 0..<layers {
    let p = "blk.\(l)."
    add(p + "attn_norm.weight", [hidden])
    add(p + "ffn_norm.weight", [hidden])
    add(p + "attn_q.weight", [heads * hd, hidden])
    add(p + "attn_k.weight", [kvHeads * hd, hidden])
    add(p + "attn_v.weight", [kvHeads * hd, hidden])
    add(p + "attn_output.weight", [hidden, heads * hd])
    if biases {
      add(p + "attn_q.bias", [heads * hd])
      add(p + "attn_k.bias", [kvHeads * hd])
      add(p + "attn_v.bias", [kvHeads * hd])
    }
    add(p + "ffn_gate.weight", [ffn, hidden])
    add(p + "ffn_up.weight", [ffn, hidden])
    add(p + "ffn_down.weight", [hidden, ffn])
  }
  let bytes = ggufBytes(metadata: metadata, tensors: tensors)
  do {
    return try bytes.withUnsafeBytes { try Checkpoint(gguf: GGUFFile(file: MappedFile(copying: $0, path: "\(arch).gguf"))) }
  } catch {
    fatalError("the fuzz target's own model does not open: \(error)")
  }
}

/// Llama (tied, 4 layers), Qwen2 (biases, untied), and llama with head_dim x heads != hidden.
nonisolated(unsafe) let models: [Checkpoint] = [
  tinyModel(arch: "llama", layers: 4, hidden: 8, heads: 2, kvHeads: 1, headDim: nil, ffn: 12, vocab: 16, tied: true, biases: false),
  tinyModel(arch: "qwen2", layers: 3, hidden: 8, heads: 2, kvHeads: 2, headDim: nil, ffn: 12, vocab: 16, tied: false, biases: true),
  tinyModel(arch: "llama", layers: 2, hidden: 8, heads: 2, kvHeads: 1, headDim: 2, ffn: 16, vocab: 8, tied: true, biases: false),
]

extension FuzzReader {
  /// A value in [0, ~2) from most bytes, or an edge case (0, 1, negative, NaN, infinities, huge).
  mutating func double() -> Double {
    let b = u8()
    let specials: [Double] = [0, 1, -0.5, .nan, .infinity, -.infinity, 1e300, .leastNonzeroMagnitude]
    return b < 248 ? Double(b) / 128 : specials[Int(b) - 248]
  }

  /// A count in -16..<224 from most bytes, or an edge case (limits, powers of two, extremes).
  mutating func int() -> Int {
    let b = u8()
    let specials = [0, 1, -1, 255, 256, 1023, 1024, 1025, 4096, 1 << 16, Int(Int32.max), 1 << 40,
                    Int.max, Int.min, -1024, 12]
    return b < 240 ? Int(b) - 16 : specials[Int(b) - 240]
  }
}

func decodeOptions(_ r: inout FuzzReader) -> UpcycleOptions {
  var o = UpcycleOptions()
  o.numExperts = r.int()
  o.topK = r.int()
  o.method = r.pick([.copy, .drop, .noise, .granular, .partition])
  o.ratio = r.double()
  o.noiseStd = r.double()
  o.granularity = r.int()
  o.granularScaling = r.pick([.down, .cubeRoot, .none])
  o.partitionSelect = r.pick([.random, .uniform, .importance])
  let flags = r.u8()
  o.sharedIndices = flags & 1 != 0
  o.partitionDisjoint = flags & 2 != 0
  o.partitionScale = flags & 4 != 0
  o.sharedExpert = flags & 8 != 0
  o.routerInit = r.pick([.normal, .uniform, .zeros])
  o.routerStd = r.double()
  o.routing = r.pick([.softmaxTopKRenorm, .softmaxTopK, .topKSoftmax])
  o.format = r.pick([.mixtral, .qwen2Moe])
  o.dtype = r.pick([.keep, .f32, .bf16, .f16])
  o.seed = r.u64()
  o.maxShardBytes = UInt64(1) << UInt64(r.u8() % 40)
  o.routerAuxLossCoef = r.double()
  // The layer selection: none (all layers) or the rest of the input as text.
  o.layers = r.bool() ? r.string(r.remaining) : nil
  return o
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzUpcycle(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  fuzzOne(data, size) { bytes in
    var r = FuzzReader(bytes)
    let model = models[Int(r.u8()) % models.count]
    let d = model.description
    let options = decodeOptions(&r)

    let upcycler = try Upcycler(checkpoint: model, options: options)
    let o = upcycler.options
    let plan = upcycler.plan
    expect(upcycler.moeLayers.count == d.numLayers && upcycler.moeLayers.contains(true),
           "layer selection \(upcycler.moeLayers) for \(d.numLayers) layers")
    expect(Set(plan.map { $0.name }).count == plan.count, "the plan names a tensor twice")

    // The written config reads back as the MoE model the plan describes.
    let config = try upcycler.makeConfig()
    let text = config.serialized(indent: 2)
    let back = try HFConfig.describe(try JSONParser.parse(text, what: "upcycled config.json"), what: "upcycled config.json")
    try back.validate(what: "upcycled config.json")
    expect(back.moe?.numExperts == o.numExperts && back.moe?.topK == o.topK
             && back.moe?.moeLayers == upcycler.moeLayers && back.numLayers == d.numLayers,
           "config \(text) does not describe the planned model")

    // Shards cover the plan in order.
    let shards = CheckpointFiles.shards(plan.map { $0.byteCount }, maxBytes: o.maxShardBytes)
    expect(shards.flatMap { $0 } == Array(plan.indices), "shards \(shards) do not cover \(plan.count) tensors in order")
    _ = shards.indices.map { CheckpointFiles.shardFileName($0, of: shards.count) }

    // Every tensor's data, as the writer would produce and encode it; of the
    // routed experts only the first two and last two of each layer (the
    // others take the same path), which keeps 1024 experts fast.
    let maxElements = plan.map { $0.shape.reduce(1, *) }.max() ?? 0
    let floats = UnsafeMutablePointer<Float>.allocate(capacity: max(1, maxElements))
    let encoded = UnsafeMutableRawPointer.allocate(byteCount: max(4, maxElements * 4), alignment: 16)
    defer { floats.deallocate(); encoded.deallocate() }
    for t in plan {
      if case let .expert(_, e, _) = t.producer, e >= 2 && e < o.numExperts - 2 { continue }
      try upcycler.produce(t, into: floats)
      encodeFromFloat(t.dtype, src: floats, count: t.shape.reduce(1, *), dst: encoded)
    }
  }
}
