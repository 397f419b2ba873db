import MoESupport
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

// A fixed set of worker threads, one per planned core, that run a closure together.
//
// The pool is dispatched several times per MoE layer, including decode steps whose
// work is tens of microseconds, so a dispatch must cost far less than that:
// - the caller publishes a job by bumping a generation counter; workers spin on it
//   for a bounded time (`spinNanoseconds`) and only then sleep on a condition variable;
// - each worker decrements a completion counter; the caller spins on it likewise;
// - both sleep paths use the "announce, then re-check" protocol (sequentially
//   consistent RMW on one side, load on the other), so no wake-up is lost.
// When workers plus the caller outnumber the CPUs (the default: one worker per core),
// a caller waiting on a CPU would take it from a worker at every dispatch. On one node
// the caller then runs worker 0's share itself (worker 0's thread stays parked), so the
// threads that spin never outnumber the CPUs. Where they still do (more workers than
// CPUs, or several nodes, where worker 0's share must run on its node), the spin loops
// also call sched_yield.

/// Where one worker runs: its node (logical index), core and PU (OS indices).
public struct WorkerPlacement: Sendable, Equatable {
  public let index: Int
  public let node: Int
  public let coreOSIndex: Int
  public let puOSIndex: Int

  public init(index: Int, node: Int, coreOSIndex: Int, puOSIndex: Int) {
    self.index = index
    self.node = node
    self.coreOSIndex = coreOSIndex
    self.puOSIndex = puOSIndex
  }
}

/// Worker threads placed node by node on a topology's cores.
///
/// Thread safety: `run` may be called from any thread; concurrent calls are serialized.
/// `run` is not reentrant: calling it from inside a body deadlocks.
public final class WorkerPool: @unchecked Sendable {
  /// The most workers a pool may have.
  public static let maximumThreads = 4096

  public let workers: [WorkerPlacement]
  /// Per worker: the pin really took effect (reported by the worker thread itself).
  public let pinned: [Bool]
  /// Whether the calling thread runs worker 0's share of each job (one node, and the
  /// workers alone fill the CPUs); worker 0's own thread then stays parked.
  public var callerRunsWorkerZero: Bool { dispatcher.callerRunsFirst }
  public var count: Int { workers.count }

  private let dispatcher: JobDispatcher
  private let threads: [BackgroundThread]
  /// Serializes callers of `run`.
  private let runLock: UnsafeMutablePointer<pthread_mutex_t>

  // MARK: - Placement

  /// Places `threads` workers (0 = one per core) on `nodes`; starts nothing.
  ///
  /// Rule:
  /// - Workers per node are proportional to the node's core count, by largest
  ///   remainder: node i gets floor(T * c_i / C) workers, and the workers left over go
  ///   one each to the nodes with the largest remainders (T * c_i mod C), ties to the
  ///   lower node. E.g. 4+4 cores, T = 2 -> 1+1; 3+5 cores, T = 4 -> 2+2 (remainders tie);
  ///   3+5 cores, T = 3 -> 1+2. A node may get no worker when its share is small
  ///   (1+15 cores, T = 2 -> 0+2); memory-only nodes never get one.
  /// - Workers of one node have contiguous indices, nodes in the order given.
  /// - Within a node with c cores and n <= c workers, worker j takes the node's core j
  ///   (logical order): the first n cores. Spreading them over the node was measured
  ///   slower on virtual machines, whose vCPU i and i + c/2 are often SMT siblings of
  ///   one physical core that hwloc cannot see.
  /// - With n > c workers, worker j takes core j mod c and, in round r = j / c, the core's
  ///   PU r mod (PUs of the core): SMT siblings are used before a PU is doubled up.
  public static func plan(nodes: [TopologyNode], threads: Int) throws -> [WorkerPlacement] {
    guard threads >= 0 else { throw MoEError.invalid("worker pool: negative thread count \(threads)") }
    guard threads <= maximumThreads else {
      throw MoEError.invalid("worker pool: \(threads) threads is more than the maximum \(maximumThreads)")
    }
    let coresPerNode = nodes.map(\.cores.count)
    let totalCores = coresPerNode.reduce(0, +)
    guard totalCores > 0 else { throw MoEError.invalid("worker pool: the topology has no cores") }
    let workerCount = threads == 0 ? totalCores : threads
    let workersPerNode = apportion(workerCount, weights: coresPerNode)

    var placements: [WorkerPlacement] = []
    placements.reserveCapacity(workerCount)
    for (node, nodeWorkers) in zip(nodes, workersPerNode) where nodeWorkers > 0 {
      let cores = node.cores
      for j in 0..<nodeWorkers {
        let core: TopologyCore
        let round: Int
        if nodeWorkers <= cores.count {
          core = cores[j]
          round = 0
        } else {
          core = cores[j % cores.count]
          round = j / cores.count
        }
        guard !core.puOSIndices.isEmpty else {
          throw MoEError.invalid("worker pool: core \(core.logicalIndex) of node \(node.logicalIndex) has no PU")
        }
        placements.append(WorkerPlacement(index: placements.count, node: node.logicalIndex,
                                          coreOSIndex: core.osIndex,
                                          puOSIndex: core.puOSIndices[round % core.puOSIndices.count]))
      }
    }
    return placements
  }

  /// Splits `total` into parts proportional to `weights` (largest remainder, ties to the
  /// lower index). Exact integer arithmetic; weights sum to > 0.
  package static func apportion(_ total: Int, weights: [Int]) -> [Int] {
    let weightSum = weights.reduce(0, +)
    var parts = weights.map { total * $0 / weightSum }
    let remainders = weights.map { total * $0 % weightSum }
    let leftOver = total - parts.reduce(0, +)
    let byRemainder = weights.indices.sorted { (remainders[$0], -$0) > (remainders[$1], -$1) }
    for index in byRemainder.prefix(leftOver) { parts[index] += 1 }
    return parts
  }

  // MARK: - Life cycle

  /// Starts `threads` workers (0 = one per core; more than the cores wrap round them),
  /// placed by `plan`. With `pin`, each thread pins itself to its PU before the pool is
  /// returned; `pinned` says where that really took effect.
  public init(topology: Topology, threads: Int = 0, pin: Bool = true) throws {
    let placements = try Self.plan(nodes: topology.nodes, threads: threads)
    let workerCount = placements.count
    // Spinning threads must yield when the workers and the caller cannot all have a CPU.
    // On this system hwloc lists only the PUs we may use (cgroup cpusets); a synthetic or
    // XML topology says nothing about the machine, so the online CPU count decides.
    var cpuCount = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    if topology.support.isThisSystem { cpuCount = min(cpuCount, max(1, topology.puCount)) }
    // Where the workers alone fill the CPUs, the caller runs worker 0's share (one node
    // only: across nodes worker 0's share must run on its node); see the top of the file.
    let callerRuns = workerCount + 1 > cpuCount && Set(placements.map(\.node)).count == 1
    let dispatcher = try JobDispatcher(workerCount: workerCount, callerRunsFirst: callerRuns,
                                       yieldWhileSpinning: workerCount + (callerRuns ? 0 : 1) > cpuCount)
    let runLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    runLock.initialize(to: pthread_mutex_t())
    guard pthread_mutex_init(runLock, nil) == 0 else {
      runLock.deallocate()
      throw MoEError(.internal, "worker pool: cannot initialize its run lock")
    }

    // Each thread reports its pin result here, then posts `started`.
    let pinResults = UnsafeMutableBufferPointer<Bool>.allocate(capacity: workerCount)
    pinResults.initialize(repeating: false)
    defer { pinResults.deallocate() }
    let started = CountingSemaphore(0)

    var threads: [BackgroundThread] = []
    threads.reserveCapacity(workerCount)
    for placement in placements {
      let index = placement.index
      let puOSIndex = placement.puOSIndex
      let thread = BackgroundThread {
        pinResults[index] = pin && topology.pinCurrentThread(puOSIndex: puOSIndex)
        started.signal()
        dispatcher.workerLoop(index: index)
      }
      guard thread.start() else {
        for _ in threads { started.wait() }
        dispatcher.stop()
        for thread in threads { thread.join() }
        pthread_mutex_destroy(runLock)
        runLock.deallocate()
        throw MoEError(.outOfMemory, "worker pool: cannot start worker thread \(index) of \(workerCount)")
      }
      threads.append(thread)
    }
    for _ in threads { started.wait() }

    self.workers = placements
    self.pinned = Array(pinResults)
    self.dispatcher = dispatcher
    self.threads = threads
    self.runLock = runLock
  }

  deinit {
    dispatcher.stop()
    for thread in threads { thread.join() }
    pthread_mutex_destroy(runLock)
    runLock.deallocate()
  }

  /// Worker indices placed on `node` (logical index), ascending; empty if none.
  public func workers(onNode node: Int) -> [Int] {
    workers.filter { $0.node == node }.map(\.index)
  }

  // MARK: - Dispatch

  /// Runs `body(workerIndex)` once for every worker index concurrently and returns when
  /// all have finished; writes made by the bodies are visible to the caller afterwards.
  /// Each index runs on its worker's thread, except index 0 with `callerRunsWorkerZero`,
  /// which the calling thread runs (it is never pinned). Which thread runs an index does
  /// not change the work an index does, so results do not depend on it. Concurrent
  /// callers wait for each other.
  public func run(_ body: (Int) -> Void) {
    pthread_mutex_lock(runLock)
    defer { pthread_mutex_unlock(runLock) }
    withoutActuallyEscaping(body) { job in dispatcher.dispatch(job) }
  }
}

// MARK: - Dispatch machinery

@inline(__always) private func monotonicNanoseconds() -> UInt64 {
  var now = timespec()
  clock_gettime(CLOCK_MONOTONIC, &now)
  return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// The state shared by the caller and the worker threads. Workers hold it strongly, so it
/// outlives the pool until every thread has exited.
private final class JobDispatcher: @unchecked Sendable {
  /// How long a waiting thread spins before it sleeps. Long enough to span the gap
  /// between dispatches of one layer in decode, short enough not to burn a core when idle.
  static let spinNanoseconds: UInt64 = 50_000

  package let workerCount: Int
  /// The caller runs index 0 of each job; worker thread 0 waits only for `stop`.
  let callerRunsFirst: Bool
  let yieldWhileSpinning: Bool

  // Counters, each on its own cache line (the caller writes `generation`, every worker
  // writes `remaining`; sharing a line would make spinning workers miss on each finish).
  private let counterMemory: UnsafeMutableRawPointer
  /// Bumped once per job (and once more to stop); workers wait for it to change.
  private let generation: UnsafeMutablePointer<Atomic<Int>>
  /// Workers that have not yet finished the current job.
  private let remaining: UnsafeMutablePointer<Atomic<Int>>
  /// Workers sleeping (or about to) on `workAvailable`.
  private let sleepingWorkers: UnsafeMutablePointer<Atomic<Int>>
  /// 1 while the caller sleeps (or is about to) on `workDone`.
  private let callerSleeping: UnsafeMutablePointer<Atomic<Int>>
  /// Set before the final generation bump; workers exit when they see it.
  private let stopping: UnsafeMutablePointer<Atomic<Bool>>

  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private let workAvailable: UnsafeMutablePointer<pthread_cond_t>
  private let workDone: UnsafeMutablePointer<pthread_cond_t>

  /// The current job. Written by the caller only while no worker runs (before the
  /// generation bump, after `remaining` reaches 0); read by workers in between.
  @exclusivity(unchecked) private var job: ((Int) -> Void)?

  init(workerCount: Int, callerRunsFirst: Bool, yieldWhileSpinning: Bool) throws {
    self.workerCount = workerCount
    self.callerRunsFirst = callerRunsFirst
    self.yieldWhileSpinning = yieldWhileSpinning
    let line = 64
    counterMemory = UnsafeMutableRawPointer.allocate(byteCount: 4 * line, alignment: line)
    generation = counterMemory.bindMemory(to: Atomic<Int>.self, capacity: 1)
    remaining = (counterMemory + line).bindMemory(to: Atomic<Int>.self, capacity: 1)
    sleepingWorkers = (counterMemory + 2 * line).bindMemory(to: Atomic<Int>.self, capacity: 1)
    callerSleeping = (counterMemory + 3 * line).bindMemory(to: Atomic<Int>.self, capacity: 1)
    stopping = (counterMemory + 3 * line + 8).bindMemory(to: Atomic<Bool>.self, capacity: 1)
    generation.initialize(to: Atomic(0))
    remaining.initialize(to: Atomic(0))
    sleepingWorkers.initialize(to: Atomic(0))
    callerSleeping.initialize(to: Atomic(0))
    stopping.initialize(to: Atomic(false))

    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    workAvailable = .allocate(capacity: 1)
    workAvailable.initialize(to: pthread_cond_t())
    workDone = .allocate(capacity: 1)
    workDone.initialize(to: pthread_cond_t())
    guard pthread_mutex_init(mutex, nil) == 0,
          pthread_cond_init(workAvailable, nil) == 0,
          pthread_cond_init(workDone, nil) == 0 else {
      throw MoEError(.internal, "worker pool: cannot initialize its mutex / condition variables")
    }
  }

  deinit {
    pthread_cond_destroy(workDone)
    pthread_cond_destroy(workAvailable)
    pthread_mutex_destroy(mutex)
    workDone.deallocate()
    workAvailable.deallocate()
    mutex.deallocate()
    generation.deinitialize(count: 1)
    remaining.deinitialize(count: 1)
    sleepingWorkers.deinitialize(count: 1)
    callerSleeping.deinitialize(count: 1)
    stopping.deinitialize(count: 1)
    counterMemory.deallocate()
  }

  // MARK: Caller side

  /// Publishes `job`, wakes sleeping workers, waits until every worker has run it, and
  /// drops the job again (so the non-escaping closure does not outlive the call).
  func dispatch(_ job: @escaping (Int) -> Void) {
    self.job = job
    remaining.pointee.store(callerRunsFirst ? workerCount - 1 : workerCount, ordering: .relaxed)
    // Publishes `job` and `remaining` (release), and orders the bump before the
    // sleeper check (sequential consistency pairs with `waitForJob`).
    generation.pointee.wrappingAdd(1, ordering: .sequentiallyConsistent)
    if sleepingWorkers.pointee.load(ordering: .sequentiallyConsistent) > 0 {
      pthread_mutex_lock(mutex)
      pthread_cond_broadcast(workAvailable)
      pthread_mutex_unlock(mutex)
    }
    if callerRunsFirst { job(0) }
    waitForCompletion()
    self.job = nil
  }

  private func waitForCompletion() {
    if spin({ remaining.pointee.load(ordering: .acquiring) == 0 }) { return }
    pthread_mutex_lock(mutex)
    // Announce, then re-check: the last worker either sees the announcement (and
    // signals under the mutex, which we hold until we wait) or we see its decrement.
    callerSleeping.pointee.store(1, ordering: .sequentiallyConsistent)
    while remaining.pointee.load(ordering: .sequentiallyConsistent) != 0 {
      pthread_cond_wait(workDone, mutex)
    }
    callerSleeping.pointee.store(0, ordering: .relaxed)
    pthread_mutex_unlock(mutex)
  }

  /// Makes every worker leave its loop; the caller then joins the threads.
  package func stop() {
    pthread_mutex_lock(mutex)
    stopping.pointee.store(true, ordering: .relaxed)
    generation.pointee.wrappingAdd(1, ordering: .sequentiallyConsistent)
    pthread_cond_broadcast(workAvailable)
    pthread_mutex_unlock(mutex)
  }

  // MARK: Worker side

  /// The body of worker thread `index`: wait for a job, run it, report, repeat.
  func workerLoop(index: Int) {
    if callerRunsFirst && index == 0 {
      // The caller runs this index: wait for `stop` without counting as a sleeping worker.
      pthread_mutex_lock(mutex)
      while !stopping.pointee.load(ordering: .relaxed) { pthread_cond_wait(workAvailable, mutex) }
      pthread_mutex_unlock(mutex)
      return
    }
    var seen = 0
    while true {
      seen = waitForJob(after: seen)
      if stopping.pointee.load(ordering: .relaxed) { return }
      execute(index)
      let left = remaining.pointee.wrappingSubtract(1, ordering: .sequentiallyConsistent).newValue
      if left == 0 && callerSleeping.pointee.load(ordering: .sequentiallyConsistent) != 0 {
        pthread_mutex_lock(mutex)
        pthread_cond_signal(workDone)
        pthread_mutex_unlock(mutex)
      }
    }
  }

  /// Runs the current job. Not inlined, so the worker's reference to the closure is
  /// released before the completion decrement: `withoutActuallyEscaping` in `run`
  /// checks that no reference survives the call.
  @inline(never)
  private func execute(_ index: Int) {
    job?(index)
  }

  /// Returns the new generation once it differs from `seen`.
  private func waitForJob(after seen: Int) -> Int {
    var current = seen
    if spin({
      current = generation.pointee.load(ordering: .acquiring)
      return current != seen
    }) { return current }

    pthread_mutex_lock(mutex)
    // Announce, then re-check (pairs with the bump-then-check in `dispatch`).
    sleepingWorkers.pointee.wrappingAdd(1, ordering: .sequentiallyConsistent)
    current = generation.pointee.load(ordering: .sequentiallyConsistent)
    while current == seen {
      pthread_cond_wait(workAvailable, mutex)
      current = generation.pointee.load(ordering: .sequentiallyConsistent)
    }
    sleepingWorkers.pointee.wrappingSubtract(1, ordering: .sequentiallyConsistent)
    pthread_mutex_unlock(mutex)
    return current
  }

  // MARK: Spinning

  /// Polls `done` for up to `spinNanoseconds`; returns whether it became true. The clock
  /// is read only every 64 polls (a vDSO call, tens of nanoseconds). There is no PAUSE
  /// hint: Swift cannot import `_mm_pause` (a compiler builtin), and naming the LLVM
  /// intrinsic through `@_silgen_name` crashes the compiler under `-sanitize=thread`.
  @inline(__always)
  private func spin(_ done: () -> Bool) -> Bool {
    var polls = 0
    var deadline: UInt64 = 0
    while true {
      if done() { return true }
      polls &+= 1
      if polls & 63 == 0 {
        let now = monotonicNanoseconds()
        if deadline == 0 {
          deadline = now &+ Self.spinNanoseconds
        } else if now >= deadline {
          return false
        }
        if yieldWhileSpinning { sched_yield() }
      }
    }
  }
}
