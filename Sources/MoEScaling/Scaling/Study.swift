// A controlled upcycling study at small scale, run from a recipe (JSON; see
// docs/scaling.md): a dense model is pretrained from scratch with snapshots
// at several token counts D1; each snapshot is upcycled in memory with each
// method and trained further (D2); baselines are the dense model continued
// from each snapshot (enough tokens for matched tokens and matched training
// FLOPs) and the same MoE trained from scratch. Every run evaluates the same
// held-out split at fixed steps. Runs are resumable (a checkpoint with the
// optimizer state after every evaluation) and deterministic from the recipe's
// seed; finished runs are not run again. The report (report.json, report.md)
// holds every curve, the comparisons, fits of the laws (docs/scaling.md) and
// laws.json for `moeupcycle plan`.

import MoESupport
import MoEFormats
import MoERuntime
import MoEModel
import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif

/// One upcycling method of a study.
public struct StudyMethod: Sendable {
  public var name: String
  public var options: UpcycleOptions
}

public struct StudyRecipe: Sendable {
  public var name = "study"
  public var seed: UInt64 = 0
  /// The model whose tokenizer (and vocabulary) the study's models use.
  public var tokenizer = ""
  /// Text files or directories (files read in name order).
  public var data: [String] = []
  public var evalFraction = 0.05
  public var evalWindows = 16
  /// The dense model's shape and initialization.
  public var dense = ModelInitOptions()
  public var experts = 8
  public var topK = 2
  /// Training settings shared by every run (constant learning rate after warmup).
  public var train = TrainerOptions()
  /// D1 grid, in steps of the dense run.
  public var denseSteps: [Int] = []
  /// D2 grid, in steps of the upcycled runs.
  public var upcycledSteps: [Int] = []
  /// Steps between held-out evaluations (and checkpoints) of every run.
  public var evalEvery = 0
  public var methods: [StudyMethod] = []
  public var denseContinued = true
  public var scratch = true
  /// Bootstrap resamples of the fits.
  public var bootstrap = 50
  /// The recipe as read (its runs' identity: a study directory holds one recipe's runs).
  public var source: JSON = .null

  public init() {}

  /// Tokens of `steps` training steps.
  public func tokens(_ steps: Int) -> Double { Double(steps * train.batch * train.seqLen) }

  /// Reads a recipe; relative paths are relative to the recipe's directory.
  public init(path: String) throws {
    let json = try JSONParser.parse(try FileSystem.readAll(path, limit: 1 << 20), what: "recipe '\(path)'")
    let base = FileSystem.parent(of: path)
    func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : FileSystem.join(base, p) }
    func int(_ j: JSON?, _ key: String, _ fallback: Int) throws -> Int {
      guard let v = j?[key] else { return fallback }
      guard let d = v.doubleValue, d == d.rounded(), abs(d) < 1e15 else {
        throw MoEError.format("recipe '\(path)': \"\(key)\" must be an integer")
      }
      return Int(d)
    }
    func double(_ j: JSON?, _ key: String, _ fallback: Double) throws -> Double {
      guard let v = j?[key] else { return fallback }
      guard let d = v.doubleValue else { throw MoEError.format("recipe '\(path)': \"\(key)\" must be a number") }
      return d
    }
    func steps(_ key: String) throws -> [Int] {
      guard let a = json[key]?.arrayValue, !a.isEmpty else {
        throw MoEError.format("recipe '\(path)' needs \"\(key)\": a list of step counts")
      }
      let v = try a.map { x -> Int in
        guard let d = x.doubleValue, d == d.rounded(), d >= 1, d <= 1e9 else {
          throw MoEError.format("recipe '\(path)': \"\(key)\" holds \(x.serialized()); step counts are positive integers")
        }
        return Int(d)
      }
      guard v == v.sorted(), Set(v).count == v.count else {
        throw MoEError.format("recipe '\(path)': \"\(key)\" must be increasing")
      }
      return v
    }
    source = json
    name = json["name"]?.stringValue ?? FileSystem.baseName(of: path)
    let seedValue = try int(json, "seed", 0)
    guard seedValue >= 0 else { throw MoEError.format("recipe '\(path)': \"seed\" must not be negative (got \(seedValue))") }
    seed = UInt64(seedValue)
    if let t = json["tokenizer"]?.stringValue { tokenizer = resolve(t) }
    if let d = json["data"] {
      guard let list = d.arrayValue?.compactMap(\.stringValue) ?? d.stringValue.map({ [$0] }) else {
        throw MoEError.format("recipe '\(path)': \"data\" must be a path or a list of paths")
      }
      data = list.map(resolve)
    }
    evalFraction = try double(json, "eval_fraction", evalFraction)
    evalWindows = try int(json, "eval_windows", evalWindows)
    let d = json["dense"]
    dense.hiddenSize = try int(d, "hidden", dense.hiddenSize)
    dense.numLayers = try int(d, "layers", dense.numLayers)
    dense.numHeads = try int(d, "heads", dense.numHeads)
    dense.numKVHeads = try int(d, "kv_heads", dense.numKVHeads)
    dense.intermediateSize = try int(d, "ffn", dense.intermediateSize)
    dense.maxPositions = try int(d, "max_positions", 1024)
    dense.initStd = try double(d, "init_std", dense.initStd)
    dense.seed = seed
    let m = json["moe"]
    experts = try int(m, "experts", experts)
    topK = try int(m, "top_k", topK)
    let t = json["train"]
    train.batch = try int(t, "batch", 8)
    train.seqLen = try int(t, "seq_len", 128)
    train.lr = Float(try double(t, "lr", 1e-3))
    train.warmup = try int(t, "warmup", 10)
    train.weightDecay = Float(try double(t, "weight_decay", 0.1))
    train.clip = Float(try double(t, "clip", 1))
    train.balanceCoef = Float(try double(t, "aux_loss_coef", 0.01))
    train.schedule = .constant
    train.seed = seed
    train.evalFraction = evalFraction
    train.evalWindows = evalWindows
    denseSteps = try steps("dense_steps")
    upcycledSteps = try steps("upcycled_steps")
    evalEvery = try int(json, "eval_every", upcycledSteps[0])
    guard evalEvery >= 1 else { throw MoEError.format("recipe '\(path)': \"eval_every\" must be at least 1") }
    bootstrap = try int(json, "bootstrap", bootstrap)
    guard (0...100_000).contains(bootstrap) else {
      throw MoEError.format("recipe '\(path)': \"bootstrap\" must be in 0...100000 (got \(bootstrap))")
    }
    guard let ms = json["methods"]?.arrayValue, !ms.isEmpty else {
      throw MoEError.format("recipe '\(path)' needs \"methods\": a list of {\"name\", \"method\", ...}")
    }
    methods = try ms.enumerated().map { i, j in
      var o = UpcycleOptions()
      o.numExperts = experts
      o.topK = topK
      o.seed = seed
      guard let methodName = j["method"]?.stringValue, let method = UpcycleOptions.Method(caseName: methodName) else {
        throw MoEError.format("recipe '\(path)': method \(i) needs \"method\": one of \(UpcycleOptions.Method.allCases.map(\.caseName).joined(separator: ", "))")
      }
      o.method = method
      o.ratio = try double(j, "ratio", o.ratio)
      o.noiseStd = try double(j, "noise_std", o.noiseStd)
      o.granularity = try int(j, "granularity", o.granularity)
      if let r = j["router_init"]?.stringValue {
        guard let ri = UpcycleOptions.RouterInit(caseName: r) else {
          throw MoEError.format("recipe '\(path)': method \(i): unknown router_init '\(r)'")
        }
        o.routerInit = ri
      }
      let name = j["name"]?.stringValue ?? methodName
      guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_" }) else {
        throw MoEError.format("recipe '\(path)': method name '\(name)' must be letters, digits, '-', '.' or '_'")
      }
      return StudyMethod(name: name, options: o)
    }
    guard Set(methods.map(\.name)).count == methods.count else {
      throw MoEError.format("recipe '\(path)': method names must differ")
    }
    if let b = json["baselines"] {
      denseContinued = b["dense_continued"]?.boolValue ?? true
      scratch = b["scratch"]?.boolValue ?? true
    }
    train.steps = max(denseSteps.last!, upcycledSteps.last!)
    guard train.warmup < min(denseSteps[0], upcycledSteps[0]) else {
      throw MoEError.format("recipe '\(path)': warmup (\(train.warmup) steps) must be shorter than the shortest run")
    }
    try train.validate()
  }
}

/// One evaluation of a run: after `step` steps (`tokens` tokens, `flops` training FLOPs).
public struct StudyPoint: Sendable {
  public var step: Int
  public var tokens: Double
  public var flops: Double
  public var loss: Double

  package var json: JSON { .object([("step", .int(step)), ("tokens", .float(tokens)), ("flops", .float(flops)), ("loss", .float(loss))]) }

  init(step: Int, tokens: Double, flops: Double, loss: Double) {
    self.step = step
    self.tokens = tokens
    self.flops = flops
    self.loss = loss
  }

  init(json j: JSON) throws {
    guard let s = j["step"]?.doubleValue, let t = j["tokens"]?.doubleValue, let f = j["flops"]?.doubleValue,
          let l = j["loss"]?.doubleValue else { throw MoEError.format("a study curve point lacks step, tokens, flops or loss") }
    self.init(step: Int(s), tokens: t, flops: f, loss: l)
  }
}

public final class Study {
  public typealias Progress = (_ run: String, _ step: Int, _ steps: Int) -> Bool

  package let recipe: StudyRecipe
  package let out: String
  package let runtime: Runtime
  package let progress: Progress?
  private var tokens: [Int32] = []

  public init(recipe: StudyRecipe, out: String, runtime: Runtime, progress: Progress? = nil) {
    self.recipe = recipe
    self.out = out
    self.runtime = runtime
    self.progress = progress
  }

  var runsDirectory: String { FileSystem.join(out, "runs") }
  func runDirectory(_ name: String) -> String { FileSystem.join(runsDirectory, name) }

  // MARK: - Running

  /// Runs every run not finished yet, then writes the report; returns report.json's path.
  public func run() throws -> String {
    let r = recipe
    guard !r.tokenizer.isEmpty else { throw MoEError.invalid("the recipe names no tokenizer model") }
    guard !r.data.isEmpty else { throw MoEError.invalid("the recipe names no data") }
    // The data, tokenized once with the tokenizer model's tokenizer.
    let vocabulary = try Checkpoint(path: r.tokenizer)
    let tokenizer = try BPETokenizer.load(checkpoint: vocabulary)
    var text = ""
    for path in r.data {
      guard FileSystem.exists(path) else { throw MoEError.notFound("the study's data '\(path)' does not exist") }
      let files = FileSystem.isDirectory(path)
        ? try FileSystem.listDirectory(path).sorted().map { FileSystem.join(path, $0) }.filter(FileSystem.isRegularFile)
        : [path]
      for f in files {
        text += String(decoding: try FileSystem.readAll(f, limit: 1 << 30), as: UTF8.self)
        text += "\n"
      }
    }
    tokens = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
    guard !tokens.isEmpty else { throw MoEError.invalid("the study's data holds no text") }
    // The directory's runs belong to one recipe and one data set: the first
    // run records them, later runs must match (they resume or reuse its runs).
    let hash = tokens.withUnsafeBytes { fnv1a64($0) }
    let identity: JSON = .object([("recipe", r.source), ("tokens", .int(tokens.count)), ("data_hash", .unsigned(hash))])
    let identityFile = FileSystem.join(out, "study.json")
    if FileSystem.isRegularFile(identityFile) {
      let stored = try JSONParser.parse(try FileSystem.readAll(identityFile), what: "'\(identityFile)'")
      guard stored.serialized() == identity.serialized() else {
        throw MoEError(.exists, "'\(out)' holds the runs of another recipe or other data (see its study.json); use a new output directory")
      }
    } else {
      try FileSystem.makeDirectories(out)
      try FileSystem.replaceText(identity.serialized(indent: 1) + "\n", at: identityFile)
    }
    try FileSystem.makeDirectories(runsDirectory)

    // The dense model from scratch, with snapshots at every D1.
    let denseInit = FileSystem.join(runsDirectory, "dense-init")
    if !FileSystem.isDirectory(denseInit) {
      var o = r.dense
      o.force = true
      _ = try ModelInit.write(to: denseInit, tokenizerSource: r.tokenizer, options: o)
    }
    let maxD1 = r.denseSteps.last!, maxD2 = r.upcycledSteps.last!
    _ = try train(name: "dense", steps: maxD1, evalAt: Set(r.denseSteps), snapshots: r.denseSteps) {
      try self.load(denseInit)
    }
    // The MoE's shape: the dense model's, every layer MoE with experts of the
    // dense FFN's size (copy upcycling's experts, and the model from scratch).
    var moeOptions = r.dense
    moeOptions.numExperts = r.experts
    moeOptions.topK = r.topK
    moeOptions.format = .mixtral
    moeOptions.force = true
    // Training FLOPs per token of the dense model and of the MoE, from their shapes.
    let denseShape = try ModelInit.description(r.dense, vocabulary: vocabulary.description)
    let moeShape = try ModelInit.description(moeOptions, vocabulary: vocabulary.description)
    let denseFLOPs = denseShape.trainingFLOPsPerToken(seqLen: r.train.seqLen)
    let moeFLOPs = moeShape.trainingFLOPsPerToken(seqLen: r.train.seqLen)
    let ratio = moeFLOPs / denseFLOPs
    for d1 in r.denseSteps {
      for m in r.methods {
        _ = try train(name: "up-\(m.name)-d1-\(d1)", steps: maxD2, evalAt: Set(r.upcycledSteps), snapshots: []) {
          try self.load(self.snapshot(d1), upcycle: m.options)
        }
      }
      if r.denseContinued {
        let matched = r.upcycledSteps.map { Int((Double($0) * ratio).rounded()) }
        _ = try train(name: "dense-d1-\(d1)", steps: max(maxD2, matched.max()!), evalAt: Set(r.upcycledSteps + matched),
                      snapshots: []) { try self.load(self.snapshot(d1)) }
      }
    }
    if r.scratch {
      let scratchInit = FileSystem.join(runsDirectory, "scratch-init")
      if !FileSystem.isDirectory(scratchInit) {
        _ = try ModelInit.write(to: scratchInit, tokenizerSource: r.tokenizer, options: moeOptions)
      }
      let sums = r.denseSteps.flatMap { d1 in r.upcycledSteps.map { d1 + $0 } }
      _ = try train(name: "scratch", steps: max(maxD2, sums.max()!), evalAt: Set(r.upcycledSteps + sums), snapshots: []) {
        try self.load(scratchInit)
      }
    }
    return try StudyReport(study: self, denseFLOPsPerToken: denseFLOPs, moeFLOPsPerToken: moeFLOPs,
                           denseParameters: Double(denseShape.parameterCounts().total),
                           activeParameters: Double(moeShape.parameterCounts().active)).write()
  }

  func snapshot(_ d1: Int) -> String { FileSystem.join(runDirectory("dense"), "step-\(d1)") }

  package func load(_ path: String, upcycle: UpcycleOptions? = nil) throws -> DecoderModel {
    var o = ModelLoadOptions()
    o.weightDType = .f32
    return try DecoderModel(path: path, runtime: runtime, options: o, upcycle: upcycle)
  }

  /// The curve of a finished run, or nil.
  func finishedCurve(_ name: String) throws -> [StudyPoint]? {
    let file = FileSystem.join(runDirectory(name), "result.json")
    guard FileSystem.isRegularFile(file) else { return nil }
    let j = try JSONParser.parse(try FileSystem.readAll(file), what: "'\(file)'")
    return try (j["curve"]?.arrayValue ?? []).map(StudyPoint.init(json:))
  }

  /// Trains run `name` for `steps` steps from the model `start` gives (or
  /// from its last checkpoint), evaluating the held-out split at step 0, at
  /// every multiple of eval_every and at `evalAt`; saves the model at
  /// `snapshots`. Returns the curve.
  package func train(name: String, steps: Int, evalAt: Set<Int>, snapshots: [Int],
                     start: () throws -> DecoderModel) throws -> [StudyPoint] {
    if let done = try finishedCurve(name) { return done }
    let dir = runDirectory(name), ckpt = FileSystem.join(dir, "checkpoint")
    try FileSystem.makeDirectories(dir)
    var options = recipe.train
    options.steps = steps
    let model: DecoderModel, trainer: Trainer
    var curve: [StudyPoint] = []
    if FileSystem.isRegularFile(FileSystem.join(ckpt, "progress.json")) {
      model = try load(ckpt)
      trainer = try Trainer(model: model, tokens: tokens, options: options)
      try trainer.restore(from: ckpt)
      let j = try JSONParser.parse(try FileSystem.readAll(FileSystem.join(ckpt, "progress.json")), what: "progress.json")
      curve = try (j["curve"]?.arrayValue ?? []).map(StudyPoint.init(json:))
    } else {
      model = try start()
      trainer = try Trainer(model: model, tokens: tokens, options: options)
    }
    let flopsPerToken = model.trainingFLOPsPerToken(seqLen: options.seqLen)
    func point() throws -> StudyPoint {
      let t = recipe.tokens(trainer.step)
      return StudyPoint(step: trainer.step, tokens: t, flops: t * flopsPerToken, loss: try trainer.evaluateHeldOut())
    }
    if curve.isEmpty { curve.append(try point()) }
    while trainer.step < steps {
      if let progress, !progress(name, trainer.step, steps) {
        throw MoEError(.cancelled, "the study was cancelled during run '\(name)' (its last checkpoint is kept)")
      }
      _ = try trainer.trainStep()
      let s = trainer.step
      if snapshots.contains(s) {
        try model.save(to: FileSystem.join(dir, "step-\(s)"), force: true)
      }
      if s % recipe.evalEvery == 0 || evalAt.contains(s) || s == steps {
        curve.append(try point())
        let progressFile: JSON = .object([("run", .string(name)), ("curve", .array(curve.map(\.json)))])
        try model.save(to: ckpt, force: true,
                       extraFiles: trainer.stateFiles() + [ExtraFile("progress.json", bytes: Array(progressFile.serialized(indent: 1).utf8))])
      }
    }
    if let progress { _ = progress(name, steps, steps) }
    let result: JSON = .object([("run", .string(name)), ("steps", .int(steps)),
                                ("parameters", .int(model.description.parameterCounts().total)),
                                ("active_parameters", .int(model.description.parameterCounts().active)),
                                ("flops_per_token", .float(flopsPerToken)), ("curve", .array(curve.map(\.json)))])
    try FileSystem.replaceText(result.serialized(indent: 1) + "\n", at: FileSystem.join(dir, "result.json"))
    FileSystem.removeTree(ckpt)
    return curve
  }
}
