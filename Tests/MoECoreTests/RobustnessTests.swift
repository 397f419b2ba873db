import Testing
@testable import MoESupport
@testable import MoEFormats
@testable import MoERuntime
@testable import MoEModel
@testable import MoEUpcycling

#if canImport(Glibc)
import Glibc
#endif

/// Bounds on sizes, NaN/infinity guards, and how outputs are put in place.
@Suite(.serialized) struct RobustnessTests {
  typealias Tiny = DecoderGradientTests

  static func scratchDirectory(_ tag: String) throws -> String {
    let dir = "/tmp/moecore-robust-\(getpid())-\(tag)-\(UInt32.random(in: 0...UInt32.max))"
    try FileSystem.makeDirectory(dir)
    return dir
  }

  static func load(_ path: String, weights: DType = .f32) throws -> DecoderModel {
    var options = ModelLoadOptions()
    options.weightDType = weights
    return try DecoderModel(path: path, runtime: try Runtime(threads: 2, pin: false), options: options)
  }

  /// Runs `body`, expecting an MoEError of `kind` whose message contains every fragment.
  static func expectError(_ kind: MoEErrorKind, _ fragments: String..., sourceLocation: SourceLocation = #_sourceLocation,
                          _ body: () throws -> Void) {
    do {
      try body()
      Issue.record("expected a \(kind) error", sourceLocation: sourceLocation)
    } catch let e as MoEError {
      #expect(e.kind == kind, "got \(e.kind): \(e.message)", sourceLocation: sourceLocation)
      for f in fragments {
        #expect(e.message.contains(f), "'\(e.message)' lacks '\(f)'", sourceLocation: sourceLocation)
      }
    } catch {
      Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
  }

  /// The id of a process that has exited and been reaped (so no process has it, barring reuse).
  static func deadProcessID() throws -> pid_t {
    var pid: pid_t = 0
    var argv: [UnsafeMutablePointer<CChar>?] = [strdup("true"), nil]
    defer { free(argv[0]) }
    guard posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ) == 0 else {
      throw MoEError.io("cannot start /bin/true")
    }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return pid
  }

  static func entries(_ dir: String) throws -> [String] { try FileSystem.listDirectory(dir) }

  static func floats(_ p: UnsafePointer<Float>, _ n: Int) -> [UInt32] {
    (0..<n).map { p[$0].bitPattern }
  }

  // MARK: - Trainer bounds

  @Test func trainerSizesAndRatesAreBounded() throws {
    let dir = try Self.scratchDirectory("bounds")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "llama", tied: true, bias: false)
    let model = try Self.load(FileSystem.join(dir, "m"))
    let tokens = Array(repeating: Int32(1), count: 500)
    func reject(_ fragments: String..., sourceLocation: SourceLocation = #_sourceLocation, _ change: (inout TrainerOptions) -> Void) {
      var o = TrainerOptions()
      o.seqLen = 8
      change(&o)
      do {
        _ = try Trainer(model: model, tokens: tokens, options: o)
        Issue.record("accepted", sourceLocation: sourceLocation)
      } catch let e as MoEError {
        #expect(e.kind == .invalidArgument, sourceLocation: sourceLocation)
        for f in fragments { #expect(e.message.contains(f), "'\(e.message)' lacks '\(f)'", sourceLocation: sourceLocation) }
      } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
      }
    }
    // The step that never ended: 2^32 - 1 sequences.
    reject("tokens per step", "\(TrainerOptions.maxTokensPerStep)") { $0.batch = Int(UInt32.max) }
    reject("tokens per step") { $0.batch = Int.max }               // no overflow trap
    reject("seq_len", "context") { $0.seqLen = 65 }                  // the tiny model's context is 64
    reject("steps", "2^24") { $0.steps = TrainerOptions.maxSteps + 1 }
    reject("warmup") { $0.warmup = 200; $0.steps = 100 }
    reject("eval_windows") { $0.evalWindows = 0 }
    reject("eval_windows") { $0.evalWindows = TrainerOptions.maxEvalWindows + 1 }
    reject("eps", "NaN") { $0.eps = 0 }
    reject("eps") { $0.eps = .nan }
    reject("lr") { $0.lr = 2 }
    reject("min_lr") { $0.lr = 1e-4; $0.minLR = 1e-3 }
    reject("weight_decay") { $0.weightDecay = 5 }
    reject("clip") { $0.clip = .infinity }
    reject("aux_loss_coef") { $0.balanceCoef = 10 }
    reject("z_loss_coef") { $0.zCoef = -1 }
    // Limits themselves are accepted; min_lr above lr is fine with a constant schedule.
    var o = TrainerOptions()
    o.seqLen = 8
    o.batch = TrainerOptions.maxTokensPerStep / 8
    o.steps = TrainerOptions.maxSteps
    o.warmup = o.steps
    o.lr = 1e-4
    o.minLR = 1e-3
    o.schedule = .constant
    _ = try Trainer(model: model, tokens: tokens, options: o)
    // Activations grow with the tokens of a pass; recompute keeps fewer.
    let a = model.trainingActivationBytes(sequences: 1, seqLen: 32, recompute: false)
    let b = model.trainingActivationBytes(sequences: 2, seqLen: 32, recompute: false)
    let c = model.trainingActivationBytes(sequences: 2, seqLen: 32, recompute: true)
    #expect(a > 0 && b > 1.5 * a && c < b)
  }

  // MARK: - Non-finite losses and gradients

  /// Every trainable value and both AdamW moments, bit for bit.
  static func trainingState(_ t: Trainer) throws -> [UInt32] {
    var state: [UInt32] = []
    try Trainer.trainable(t.model, t.options.trainOnly, t.grads)({ _, w, _, n, _ in state += Self.floats(w, n) })
    return state + Self.floats(t.moments.pointer, 2 * t.parameterCount)
  }

  static func trainer(_ model: DecoderModel, skip: Bool = false) throws -> Trainer {
    var o = TrainerOptions()
    o.seqLen = 8
    o.batch = 2
    o.steps = 10
    o.lr = 1e-2
    o.evalFraction = 0
    o.onNonFinite = skip ? .skip : .error
    return try Trainer(model: model, tokens: Array((0..<200).map { Int32($0 % 37) }), options: o)
  }

  @Test func aNonFiniteGradientStopsTheStepBeforeAnyUpdate() throws {
    let dir = try Self.scratchDirectory("nan-grad")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "llama", tied: true, bias: false)
    let model = try Self.load(FileSystem.join(dir, "m"))
    let t = try Self.trainer(model)
    _ = try t.trainStep()
    // The next step adds to clean gradients; a NaN planted in one shows in the norm only.
    let before = try Self.trainingState(t)
    t.grads!.layers[1].down!.pointer[5] = .nan
    Self.expectError(.nonFinite, "step 2", "gradient", "model.layers.1.mlp.down_proj.weight", "no weight") {
      _ = try t.trainStep()
    }
    #expect(t.step == 1)
    #expect(try Self.trainingState(t) == before)
    // The next step clears the gradients and goes on.
    let s = try t.trainStep()
    #expect(!s.skipped && s.step == 2 && s.loss.isFinite && s.gradNorm.isFinite)
    #expect(try Self.trainingState(t) != before)
    // Fused tensors are named by the part that holds the value: a k row, an up row.
    let H = Tiny.H, hd = H / Tiny.heads
    t.grads!.layers[0].qkv.pointer[(Tiny.heads * hd + 1) * H + 2] = .infinity
    Self.expectError(.nonFinite, "'model.layers.0.self_attn.k_proj.weight' is inf") { _ = try t.trainStep() }
    _ = try t.trainStep()
    t.grads!.layers[0].gateUp!.pointer[(Tiny.F + 3) * H] = .nan
    Self.expectError(.nonFinite, "'model.layers.0.mlp.up_proj.weight' is nan") { _ = try t.trainStep() }
  }

  @Test func skipModeAdvancesTheStepWithoutUpdating() throws {
    let dir = try Self.scratchDirectory("nan-skip")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "mixtral", tied: true, bias: false)
    let model = try Self.load(FileSystem.join(dir, "m"))
    let t = try Self.trainer(model, skip: true)
    _ = try t.trainStep()
    let before = try Self.trainingState(t)
    let lrBefore = t.learningRate(at: 1)
    // Expert 2's gate rows start at 2 F H in the layer's gate gradient.
    try model.layers[0].moe!.gradient(.gate).pointer[2 * Tiny.F * Tiny.H + 3] = .infinity
    let skipped = try t.trainStep()
    #expect(skipped.skipped && skipped.step == 2 && !skipped.gradNorm.isFinite && skipped.lr == lrBefore)
    #expect(t.step == 2)
    #expect(try Self.trainingState(t) == before)
    let next = try t.trainStep()
    #expect(!next.skipped && next.step == 3 && next.gradNorm.isFinite && next.lr == t.learningRate(at: 2))
    #expect(try Self.trainingState(t) != before)
    // In error mode the same fault names the expert's tensor.
    let strict = try Self.trainer(model)
    _ = try strict.trainStep()
    try model.layers[1].moe!.gradient(.gate).pointer[2 * Tiny.F * Tiny.H + 3] = .nan
    Self.expectError(.nonFinite, "model.layers.1.block_sparse_moe.experts.2.w1.weight") { _ = try strict.trainStep() }
  }

  @Test func optimizerStateWithNaNIsNotResumed() throws {
    let dir = try Self.scratchDirectory("nan-moments")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "m"), ck = FileSystem.join(dir, "ck")
    try Tiny.writeModel(src, arch: "llama", tied: true, bias: false)
    let t = try Self.trainer(try Self.load(src))
    _ = try t.trainStep()
    t.moments.pointer[t.parameterCount + 9] = .nan   // adam.v
    try t.model.save(to: ck, extraFiles: t.stateFiles())
    let fresh = try Self.trainer(try Self.load(ck))
    Self.expectError(.nonFinite, "adam.v", "element 9") { try fresh.restore(from: ck) }
    #expect(fresh.step == 0)
    #expect(Self.floats(fresh.moments.pointer, 2 * fresh.parameterCount).allSatisfy { $0 == 0 })
  }

  @Test func aNaNWeightMakesTheLossNonFiniteAndIsNamed() throws {
    let dir = try Self.scratchDirectory("nan-weight")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "llama", tied: true, bias: false)
    try ModelWriterTests.writeTokenizerFiles(FileSystem.join(dir, "m"))
    let model = try Self.load(FileSystem.join(dir, "m"))
    #expect(try model.firstNonFiniteWeight() == nil)
    let t = try Self.trainer(model)
    let before = try Self.trainingState(t)
    model.layers[0].output.storage.pointer[7] = .nan
    let stateWithNaN = try Self.trainingState(t)
    #expect(try model.firstNonFiniteWeight() == "model.layers.0.self_attn.o_proj.weight")
    Self.expectError(.nonFinite, "the loss is nan", "model.layers.0.self_attn.o_proj.weight") { _ = try t.trainStep() }
    #expect(t.step == 0)
    #expect(try Self.trainingState(t) == stateWithNaN && stateWithNaN != before)

    // Saving refuses before anything is written.
    let out = FileSystem.join(dir, "out")
    Self.expectError(.nonFinite, "model.layers.0.self_attn.o_proj.weight", "refusing to save") { try model.save(to: out) }
    #expect(try Self.entries(dir) == ["m"])

    // Evaluation and generation say what is wrong instead of printing NaN or garbage.
    Self.expectError(.nonFinite, "evaluation", "not finite", "model.layers.0.self_attn.o_proj.weight") {
      _ = try model.evaluate(tokens: Array((0..<40).map { Int32($0 % 30) }), options: EvalOptions())
    }
    var g = GenerateOptions()
    g.maxNewTokens = 4
    Self.expectError(.nonFinite, "generation", "not finite", "model.layers.0.self_attn.o_proj.weight") {
      _ = try model.generate(prompt: "the sea", options: g)
    }
    g.temperature = 0.8
    Self.expectError(.nonFinite, "generation") { _ = try model.generate(prompt: "the sea", options: g) }
  }

  /// NaN router logits (a NaN router row, or NaN activations reaching the router)
  /// route somewhere without trapping, and the NaN surfaces as an error.
  @Test(arguments: ["router", "embedding"])
  func nanInAnMoEModelIsReportedNotTrapped(where: String) throws {
    let dir = try Self.scratchDirectory("nan-moe")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "mixtral", tied: true, bias: false)
    let model = try Self.load(FileSystem.join(dir, "m"))
    let expected: String
    if `where` == "router" {
      model.layers[1].moe!.router.pointer[Tiny.H + 2] = .nan
      expected = "model.layers.1.block_sparse_moe.gate.weight"
    } else {
      for i in 0..<(Tiny.V * Tiny.H) { model.embedding.storage.pointer[i] = .nan }
      expected = "model.embed_tokens.weight"
    }
    let tokens = Array((0..<40).map { Int32($0 % 30) })
    Self.expectError(.nonFinite, "evaluation", expected) { _ = try model.evaluate(tokens: tokens, options: EvalOptions()) }
    let t = try Self.trainer(model)
    Self.expectError(.nonFinite, "the loss", expected) { _ = try t.trainStep() }
  }

  @Test func overflowingActivationsAreReportedAsSuch() throws {
    let dir = try Self.scratchDirectory("inf-logits")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "llama", tied: false, bias: false)
    let model = try Self.load(FileSystem.join(dir, "m"))
    // Finite but huge: every product of the LM head overflows.
    for i in 0..<Tiny.H { model.finalNorm.pointer[i] *= 1e20 }
    for i in 0..<(Tiny.V * Tiny.H) { model.lmHead.storage.pointer[i] *= 1e20 }
    #expect(try model.firstNonFiniteWeight() == nil)
    Self.expectError(.nonFinite, "every weight is finite") {
      _ = try model.evaluate(tokens: Array((0..<20).map { Int32($0 % 30) }), options: EvalOptions())
    }
  }

  @Test func bf16WeightsAreCheckedToo() throws {
    let dir = try Self.scratchDirectory("bf16")
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(FileSystem.join(dir, "m"), arch: "llama", tied: false, bias: false)
    let model = try Self.load(FileSystem.join(dir, "m"), weights: .bf16)
    #expect(try model.firstNonFiniteWeight() == nil)
    UnsafeMutableRawPointer(model.lmHead.storage.pointer).assumingMemoryBound(to: UInt16.self)[11] = 0x7F80  // +inf
    #expect(try model.firstNonFiniteWeight() == "lm_head.weight")
    Self.expectError(.nonFinite, "lm_head.weight") { try model.save(to: FileSystem.join(dir, "out"), dtype: .bf16) }
    #expect(try Self.entries(dir) == ["m"])
  }

  @Test func finitenessKernels() {
    var v = (0..<10_000).map { Float($0 % 97) - 48 }
    #expect(v.withUnsafeBufferPointer { firstNonFinite($0.baseAddress!, $0.count) } == nil)
    let reference = v.withUnsafeBufferPointer { logSumExp($0.baseAddress!, 97) }
    #expect(reference.isFinite && reference > 48)
    for (index, bad) in [(9_999, Float.nan), (4_100, .infinity), (3, -.infinity)] {
      var w = v
      w[index] = bad
      #expect(w.withUnsafeBufferPointer { firstNonFinite($0.baseAddress!, $0.count) } == index)
      #expect(w.withUnsafeBufferPointer { logSumExp($0.baseAddress!, $0.count) }.isNaN)
    }
    v[50] = .nan
    #expect(v.withUnsafeBufferPointer { logSumExp($0.baseAddress! + 51, 97) }.isFinite)
    let bf16: [UInt16] = [0x3F80, 0xBF80, 0x7F7F, 0xFF80, 0x0001]
    #expect(bf16.withUnsafeBufferPointer { firstNonFiniteBF16($0.baseAddress!, $0.count) } == 3)
    #expect(bf16.withUnsafeBufferPointer { firstNonFiniteBF16($0.baseAddress!, 3) } == nil)
  }

  // MARK: - Output directories

  @Test func staleTemporariesOfDeadWritersAreRemoved() throws {
    let dir = try Self.scratchDirectory("stale")
    defer { FileSystem.removeTree(dir) }
    let dead = try Self.deadProcessID(), live = getppid()
    for name in [".out.tmp-\(dead)-1", ".out.tmp-\(dead)-2.old", ".out.tmp-\(live)-3", ".other.tmp-\(dead)-4",
                 ".out.tmp-\(getpid())-5", ".out.tmp-x-6"] {
      try FileSystem.makeDirectory(FileSystem.join(dir, name))
      try FileSystem.writeText(String(repeating: "x", count: 10_000), to: FileSystem.join(dir, name + "/data"))
    }
    // With an output in place, a dead writer's `.old` tree is stale too.
    try FileSystem.makeDirectory(FileSystem.join(dir, "out"))
    let target = try OutputDirectory(path: FileSystem.join(dir, "out"), force: true, input: "")
    defer { target.discard() }
    #expect(target.staleRemoved.count == 2)
    #expect(target.staleRemoved.bytes >= 20_000)
    let left = try Self.entries(dir)
    #expect(left.contains(".out.tmp-\(live)-3") && left.contains(".other.tmp-\(dead)-4"))
    #expect(left.contains(".out.tmp-\(getpid())-5") && left.contains(".out.tmp-x-6"))
    #expect(!left.contains(".out.tmp-\(dead)-1") && !left.contains(".out.tmp-\(dead)-2.old"))
    // The new temporary names the output and this process.
    #expect(FileSystem.baseName(of: target.temporary).hasPrefix(".out.tmp-\(getpid())-"))
    #expect(OutputDirectory.writerProcess(ofTemporary: FileSystem.baseName(of: target.temporary), output: "x/out") == getpid())
  }

  /// A writer killed between the two renames of the fallback left no output:
  /// the next start puts the previous output back before anything else.
  @Test func anInterruptedTwoRenameReplacementIsRestored() throws {
    let dir = try Self.scratchDirectory("restore")
    defer { FileSystem.removeTree(dir) }
    let dead = try Self.deadProcessID(), out = FileSystem.join(dir, "out")
    for (name, text) in [(".out.tmp-\(dead)-8.old", "old"), (".out.tmp-\(dead)-8", "new")] {
      try FileSystem.makeDirectory(FileSystem.join(dir, name))
      try FileSystem.writeText(text, to: FileSystem.join(dir, name + "/file"))
    }
    Self.expectError(.exists, "already exists") { _ = try OutputDirectory(path: out, force: false, input: "") }
    #expect(try FileSystem.readAll(FileSystem.join(out, "file")) == Array("old".utf8))
    #expect(try Self.entries(dir) == [".out.tmp-\(dead)-8", "out"])
    let target = try OutputDirectory(path: out, force: true, input: "")
    target.discard()
    #expect(target.staleRemoved.count == 1)
    #expect(try Self.entries(dir) == ["out"])
  }

  @Test func upcycleReportsTheStaleTemporariesItRemoved() throws {
    let dir = try Self.scratchDirectory("upcycle-stale")
    defer { FileSystem.removeTree(dir) }
    let src = FileSystem.join(dir, "dense"), out = FileSystem.join(dir, "moe")
    try Tiny.writeModel(src, arch: "llama", tied: true, bias: false)
    let dead = try Self.deadProcessID()
    try FileSystem.makeDirectory(FileSystem.join(dir, ".moe.tmp-\(dead)-77"))
    try FileSystem.writeText(String(repeating: "y", count: 50_000), to: FileSystem.join(dir, ".moe.tmp-\(dead)-77/model.safetensors"))
    var o = UpcycleOptions()
    o.numExperts = 2
    o.topK = 1
    let report = try Upcycler(checkpoint: try Checkpoint(path: src), options: o).write(to: out, progress: nil)
    #expect(report.staleTemporaries.count == 1 && report.staleTemporaries.bytes >= 50_000)
    #expect(try Self.entries(dir) == ["dense", "moe"])
    // Nothing stale the second time.
    o.force = true
    let again = try Upcycler(checkpoint: try Checkpoint(path: src), options: o).write(to: out, progress: nil)
    #expect(again.staleTemporaries == StaleTemporaries())
    #expect(try Self.entries(dir) == ["dense", "moe"])
    // An empty layer selection is an error, not "all".
    o.layers = ""
    Self.expectError(.invalidArgument, "empty", "all") { _ = try Upcycler(checkpoint: try Checkpoint(path: src), options: o) }
    o.layers = nil
    o.threads = 5000
    Self.expectError(.invalidArgument, "threads") { _ = try Upcycler(checkpoint: try Checkpoint(path: src), options: o) }
  }

  /// A forced replacement swaps the new directory in (atomically, or by two
  /// renames where the file system cannot exchange) and leaves no temporary.
  @Test(arguments: [true, false])
  func forceReplacesAnExistingDirectory(exchange: Bool) throws {
    let dir = try Self.scratchDirectory("force")
    defer { FileSystem.removeTree(dir) }
    let out = FileSystem.join(dir, "out")
    try FileSystem.makeDirectory(out)
    try FileSystem.writeText("old", to: FileSystem.join(out, "old-file"))
    let target = try OutputDirectory(path: out + "/", force: true, input: "")
    target.atomicExchange = exchange
    try FileSystem.writeText("new", to: FileSystem.join(target.temporary, "new-file"))
    try target.commit()
    target.discard()
    #expect(try Self.entries(out) == ["new-file"])
    #expect(try Self.entries(dir) == ["out"])
    // Without force, an output that appeared while writing is not replaced.
    let racing = FileSystem.join(dir, "racing")
    let second = try OutputDirectory(path: racing, force: false, input: "")
    try FileSystem.makeDirectory(racing)
    Self.expectError(.exists, "appeared while writing") { try second.commit() }
    second.discard()
    #expect(try Self.entries(dir) == ["out", "racing"])
    #expect(try Self.entries(racing).isEmpty)
  }

  @Test func outputsThatCannotBeReplacedAreRefusedClearly() throws {
    let dir = try Self.scratchDirectory("refuse")
    defer { FileSystem.removeTree(dir) }
    let file = FileSystem.join(dir, "file"), link = FileSystem.join(dir, "link")
    try FileSystem.writeText("keep", to: file)
    #expect(symlink(file, link) == 0)
    Self.expectError(.invalidArgument, "'\(file)'", "not a directory") {
      _ = try OutputDirectory(path: FileSystem.join(file, "out"), force: false, input: "")
    }
    Self.expectError(.notFound, "does not exist") {
      _ = try OutputDirectory(path: FileSystem.join(dir, "missing/out"), force: false, input: "")
    }
    for force in [false, true] {
      Self.expectError(.exists, "is a regular file", "only an existing directory") {
        _ = try OutputDirectory(path: file, force: force, input: "")
      }
      Self.expectError(.exists, "is a symbolic link") { _ = try OutputDirectory(path: link, force: force, input: "") }
    }
    for name in [".", "..", "a/.", "a/..", "/"] {
      Self.expectError(.invalidArgument, "name a new directory") { _ = try OutputDirectory(path: name, force: true, input: "") }
    }
    // The current directory under its full name, and a mount point.
    let cwd = realPath(".")!
    Self.expectError(.invalidArgument, "the current directory") { _ = try OutputDirectory(path: cwd, force: true, input: "") }
    Self.expectError(.invalidArgument, "mount point") { _ = try OutputDirectory(path: "/proc", force: true, input: "") }
    Self.expectError(.exists, "already exists", "set force") { _ = try OutputDirectory(path: dir, force: false, input: "") }
    #expect(try FileSystem.readAll(file) == Array("keep".utf8))
    #expect(try Self.entries(dir) == ["file", "link"])
  }

  @Test func freeSpaceIsCheckedBeforeWriting() throws {
    Self.expectError(.io, "/tmp/x", "No space left on device") {
      try FileSystem.checkFreeSpace(UInt64.max, in: "/tmp", for: "/tmp/x")
    }
    try FileSystem.checkFreeSpace(1, in: "/tmp", for: "/tmp/x")
  }

  // MARK: - Topology

  @Test func syntheticTopologiesAreBoundedBeforeHwlocBuildsThem() throws {
    for spec in ["pack:300 core:100 pu:1", "pack:1000 core:1000", "node:2(memory=1GB) core:4096 pu:1",
                 "pack:99999999999999999999 pu:1", "70 70"] {
      let start = monotonicSeconds()
      Self.expectError(.invalidArgument, "PUs", "\(Topology.maxSyntheticPUs)") { _ = try Topology(source: .synthetic(spec)) }
      #expect(monotonicSeconds() - start < 0.5, "\(spec) took \(monotonicSeconds() - start) s")
    }
    Self.expectError(.invalidArgument, "is not TYPE:COUNT") { _ = try Topology(source: .synthetic("pack:2 core:many")) }
    // Memory children add no PUs; attributes are skipped.
    try Topology.checkSyntheticSize("pack:2 [numa(memory=1GB)] l3:1 core:32 pu:64", what: "t")
    let t = try Topology(source: .synthetic("pack:4 [numa] core:16 pu:2"))
    #expect(t.puCount == 128)
  }
}
