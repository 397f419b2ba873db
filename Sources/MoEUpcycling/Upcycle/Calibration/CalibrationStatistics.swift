import MoESupport
import MoEFormats
#if canImport(Glibc)
import Glibc
#endif

/// One dense FFN layer's activation statistics over calibration tokens.
/// Activations are a = silu(x W_gate^T) * (x W_up^T), per intermediate neuron.
public struct LayerStatistics: Sendable {
  /// Mean |a| per neuron [I].
  public var absMean: [Float]
  /// Mean a^2 per neuron [I].
  public var squareMean: [Float]
  /// Fraction of tokens with |a| above `threshold`, per neuron [I].
  public var fireFrequency: [Float]
  /// The layer's firing threshold: the `fireQuantile` quantile of |a| over
  /// every neuron of the first calibration sequence.
  public var threshold: Float
  /// Activations of a fixed sample of tokens, the co-activation sketch
  /// [sampleRows, I] row-major.
  public var sketch: [Float]
  /// The router's input at the same tokens: the hidden state after the
  /// post-attention norm [sampleRows, H].
  public var routerInputs: [Float]

  /// Tokens in the sample.
  public var sampleRows: Int { absMean.isEmpty ? 0 : sketch.count / absMean.count }
}

/// Which per-neuron statistic ranks neurons by importance.
extension UpcycleOptions.Importance {
  /// Per-neuron scores of this statistic.
  package func scores(_ s: LayerStatistics) -> [Double] {
    switch self {
    case .l1: return s.absMean.map(Double.init)
    case .l2: return s.squareMean.map { Double($0).squareRoot() }
    case .frequency: return s.fireFrequency.map(Double.init)
    }
  }
}

/// Activation statistics of every FFN layer of a dense model over calibration
/// data (Calibrator), with what identifies the data and the model. Saved and
/// loaded as a safetensors file.
public struct CalibrationStatistics: Sendable {
  public var layers: [LayerStatistics]
  public var hidden: Int
  public var intermediate: Int
  public var sampleRows: Int
  /// Calibration tokens seen.
  public var tokens: Int
  /// FNV-1a 64 of the calibration token ids (little-endian int32).
  public var dataHash: UInt64
  /// Identifies the dense model (ModelFingerprint).
  public var modelFingerprint: UInt64
  public var fireQuantile: Double

  static let formatName = "moeupcycle-calibration"
  static let formatVersion = "1"

  public var dataHashText: String { cFormat("%016llx", dataHash) }

  /// The model identity a statistics file must match: the shape, and a hash
  /// of the first layer's dense gate weights as f32.
  static func fingerprint(of checkpoint: Checkpoint) throws -> UInt64 {
    let d = checkpoint.description
    let gate = d.hf.name(.ffnGate, layer: 0)
    let w = try checkpoint.source.readFloat(gate, shape: [d.intermediateSize, d.hiddenSize])
    checkpoint.source.release(gate)
    var shape = [UInt64(d.numLayers), UInt64(d.hiddenSize), UInt64(d.intermediateSize), UInt64(d.vocabSize)]
    var h = shape.withUnsafeBytes { fnv1a64($0) }
    h ^= w.withUnsafeBytes { fnv1a64($0) }
    shape.removeAll()
    return h
  }

  /// Checks that these statistics were collected on `checkpoint`'s model.
  package func check(matches checkpoint: Checkpoint, path: String) throws {
    let d = checkpoint.description
    guard layers.count == d.numLayers, hidden == d.hiddenSize, intermediate == d.intermediateSize else {
      throw MoEError.shape("statistics file '\(path)' is for a model with \(layers.count) layers, hidden size \(hidden) and FFN size \(intermediate); '\(checkpoint.path)' has \(d.numLayers), \(d.hiddenSize) and \(d.intermediateSize)")
    }
    let mine = try Self.fingerprint(of: checkpoint)
    guard mine == modelFingerprint else {
      throw MoEError.invalid("statistics file '\(path)' was collected on another model (its weights differ from '\(checkpoint.path)'); collect statistics on this model with calibration data")
    }
  }

  // MARK: File

  /// Writes the statistics as safetensors under a temporary name renamed
  /// into place; an existing file is refused unless `force`.
  public func save(to path: String, force: Bool) throws {
    try FileSystem.checkReplaceable(path, force: force, what: "statistics file")
    var tensors: [(name: String, dtype: DType, shape: [Int])] = []
    var data: [[Float]] = []
    for (l, s) in layers.enumerated() {
      let p = "layers.\(l)."
      tensors += [(p + "abs_mean", .f32, [intermediate]), (p + "square_mean", .f32, [intermediate]),
                  (p + "fire_frequency", .f32, [intermediate]), (p + "threshold", .f32, [1]),
                  (p + "sketch", .f32, [sampleRows, intermediate]), (p + "router_inputs", .f32, [sampleRows, hidden])]
      data += [s.absMean, s.squareMean, s.fireFrequency, [s.threshold], s.sketch, s.routerInputs]
    }
    let metadata: [(String, String)] = [
      ("format", Self.formatName), ("version", Self.formatVersion), ("tokens", String(tokens)),
      ("data_hash", dataHashText), ("model_fingerprint", cFormat("%016llx", modelFingerprint)),
      ("fire_quantile", cFormat("%.17g", fireQuantile)), ("sample_rows", String(sampleRows)),
    ]
    try FileSystem.writeAtomically(path) { file in
      try file.write(Safetensors.headerBytes(tensors: tensors, metadata: metadata))
      for values in data { try values.withUnsafeBytes { try file.write($0) } }
    }
  }

  /// Reads statistics written by `save`.
  public static func load(from path: String) throws -> CalibrationStatistics {
    try load(source: try SafetensorsSource(file: path), path: path)
  }

  package static func load(source: SafetensorsSource, path: String) throws -> CalibrationStatistics {
    let meta = Dictionary(source.metadata, uniquingKeysWith: { a, _ in a })
    guard meta["format"] == formatName else {
      throw MoEError.format("'\(path)' is not a calibration statistics file (its metadata has no format \(formatName))")
    }
    guard meta["version"] == formatVersion else {
      throw MoEError.unsupported("'\(path)': statistics format version \(meta["version"] ?? "none") (this library reads \(formatVersion))")
    }
    func number<T: FixedWidthInteger>(_ key: String, hex: Bool = false) throws -> T {
      guard let text = meta[key], let v = T(text, radix: hex ? 16 : 10) else {
        throw MoEError.format("'\(path)': metadata '\(key)' is missing or not a number")
      }
      return v
    }
    guard let info = source.info("layers.0.abs_mean"), info.shape.count == 1,
          let routerInfo = source.info("layers.0.router_inputs"), routerInfo.shape.count == 2 else {
      throw MoEError.format("'\(path)': no layers.0 statistics")
    }
    let I = info.shape[0], H = routerInfo.shape[1]
    let S: Int = try number("sample_rows")
    var layers: [LayerStatistics] = []
    var l = 0
    while source.info("layers.\(l).abs_mean") != nil {
      let p = "layers.\(l)."
      layers.append(LayerStatistics(
        absMean: try source.readFloat(p + "abs_mean", shape: [I]),
        squareMean: try source.readFloat(p + "square_mean", shape: [I]),
        fireFrequency: try source.readFloat(p + "fire_frequency", shape: [I]),
        threshold: try source.readFloat(p + "threshold", shape: [1])[0],
        sketch: try source.readFloat(p + "sketch", shape: [S, I]),
        routerInputs: try source.readFloat(p + "router_inputs", shape: [S, H])))
      l += 1
    }
    guard let quantile = Double(meta["fire_quantile"] ?? "") else {
      throw MoEError.format("'\(path)': metadata 'fire_quantile' is missing or not a number")
    }
    return CalibrationStatistics(layers: layers, hidden: H, intermediate: I, sampleRows: S,
                                 tokens: try number("tokens"), dataHash: try number("data_hash", hex: true),
                                 modelFingerprint: try number("model_fingerprint", hex: true), fireQuantile: quantile)
  }
}

extension CalibrationStatistics {
  /// Runs the dense model of `checkpoint` over the calibration data.
  public init(collecting checkpoint: Checkpoint, options: CalibrationOptions) throws {
    self = try Calibrator.collect(checkpoint: checkpoint, options: options)
  }
}
