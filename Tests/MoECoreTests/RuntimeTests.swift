@testable import MoESupport
@testable import MoERuntime
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing

// MARK: - Fixtures

/// A hand-written hwloc XML topology: one Package + NUMA node per entry of
/// `coresPerNode` (single-PU cores, OS indices consecutive across nodes), plus an
/// optional memory-only NUMA node (empty cpuset) hanging off the machine.
/// hwloc 2.9 needs complete_cpuset / complete_nodeset on every object (it crashes
/// without them), so they are written out in full.
private func handWrittenXML(coresPerNode: [Int], memoryOnlyNode: Bool = false) -> String {
  func hex(_ mask: UInt64) -> String { "0x" + String(mask, radix: 16) }
  func sets(cpus: UInt64, nodes: UInt64) -> String {
    "cpuset=\"\(hex(cpus))\" complete_cpuset=\"\(hex(cpus))\" nodeset=\"\(hex(nodes))\" complete_nodeset=\"\(hex(nodes))\""
  }
  let totalCores = coresPerNode.reduce(0, +)
  let nodeCount = coresPerNode.count + (memoryOnlyNode ? 1 : 0)
  let allCPUs: UInt64 = totalCores == 64 ? ~0 : (1 << UInt64(totalCores)) - 1
  let allNodes: UInt64 = (1 << UInt64(nodeCount)) - 1
  var xml = """
    <?xml version="1.0" encoding="UTF-8"?>
    <!DOCTYPE topology SYSTEM "hwloc2.dtd">
    <topology version="2.0">
    <object type="Machine" os_index="0" \(sets(cpus: allCPUs, nodes: allNodes))>

    """
  if memoryOnlyNode {
    let node = UInt64(coresPerNode.count)
    xml += "<object type=\"NUMANode\" os_index=\"\(node)\" \(sets(cpus: 0, nodes: 1 << node)) local_memory=\"4096\"/>\n"
  }
  var pu = 0
  for (node, cores) in coresPerNode.enumerated() {
    let cpus = ((UInt64(1) << UInt64(cores)) - 1) << UInt64(pu)
    let nodeBit = UInt64(1) << UInt64(node)
    xml += "<object type=\"Package\" os_index=\"\(node)\" \(sets(cpus: cpus, nodes: nodeBit))>\n"
    if node == 0 { xml += "<info name=\"CPUModel\" value=\"Hand-written CPU\"/>\n" }
    xml += "<object type=\"NUMANode\" os_index=\"\(node)\" \(sets(cpus: cpus, nodes: nodeBit)) local_memory=\"\((node + 1) << 30)\"/>\n"
    for _ in 0..<cores {
      let bit = UInt64(1) << UInt64(pu)
      xml += "<object type=\"Core\" os_index=\"\(pu)\" \(sets(cpus: bit, nodes: nodeBit))>"
      xml += "<object type=\"PU\" os_index=\"\(pu)\" \(sets(cpus: bit, nodes: nodeBit))/></object>\n"
      pu += 1
    }
    xml += "</object>\n"
  }
  xml += "</object>\n</topology>\n"
  return xml
}

/// Writes `text` to a fresh temporary file, runs `body` with its path, removes it.
private func withTemporaryFile<T>(_ text: String, _ body: (String) throws -> T) throws -> T {
  let path = "/tmp/moecore-runtime-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).xml"
  try FileSystem.writeText(text, to: path)
  defer { unlink(path) }
  return try body(path)
}

/// Expects `body` to throw a MoEError; records an issue for any other outcome.
private func expectMoEError(_ body: () throws -> Void) {
  do {
    try body()
    Issue.record("expected a MoEError, nothing was thrown")
  } catch is MoEError {
  } catch {
    Issue.record("expected a MoEError, got \(error)")
  }
}

/// Nodes with the given core counts, cores numbered consecutively (for plan tests).
private func nodes(coresPerNode: [Int], pusPerCore: Int = 1) -> [TopologyNode] {
  var core = 0
  return coresPerNode.enumerated().map { node, cores in
    TopologyNode(logicalIndex: node, osIndex: node, memoryBytes: 0, cores: (0..<cores).map { _ in
      defer { core += 1 }
      return TopologyCore(logicalIndex: core, osIndex: core,
                          puOSIndices: (0..<pusPerCore).map { core * pusPerCore + $0 })
    })
  }
}

/// Workers per node, in node order.
private func workersPerNode(_ plan: [WorkerPlacement], nodeCount: Int) -> [Int] {
  (0..<nodeCount).map { node in plan.filter { $0.node == node }.count }
}

/// Placement invariants that hold for every plan: indices 0..<n in order, nodes
/// non-decreasing (one contiguous block per node).
private func expectWellFormed(_ plan: [WorkerPlacement]) {
  #expect(plan.map(\.index) == Array(plan.indices))
  #expect(zip(plan, plan.dropFirst()).allSatisfy { $0.node <= $1.node })
}

/// All runtime suites live under one name, so `swift test --filter Runtime` selects them.
@Suite enum RuntimeTests {}

// MARK: - Topology

extension RuntimeTests {
  @Suite struct TopologyTests {
    @Test func syntheticTwoNodesOfFourCores() throws {
      let topology = try Topology(source: .synthetic("pack:2 [numa] l3:1 core:4 pu:1"))
      #expect(topology.nodes.count == 2)
      #expect(topology.nodes.map(\.cores.count) == [4, 4])
      #expect(topology.nodes.map(\.logicalIndex) == [0, 1])
      #expect(topology.nodes[0].cores.map(\.osIndex) == [0, 1, 2, 3])
      #expect(topology.nodes[1].cores.map(\.puOSIndices) == [[4], [5], [6], [7]])
      #expect(topology.coreCount == 8)
      #expect(topology.puCount == 8)
      #expect(topology.cpuModel == "")
      #expect(!topology.support.isThisSystem)
      #expect(!topology.support.canPinThreads)
      #expect(!topology.support.canBindMemory)
      #expect(!topology.pinCurrentThread(puOSIndex: 0))
    }

    @Test func syntheticFourNodesOfTwoSMTCores() throws {
      let topology = try Topology(source: .synthetic("pack:4 [numa] core:2 pu:2"))
      #expect(topology.nodes.count == 4)
      #expect(topology.nodes.map(\.cores.count) == [2, 2, 2, 2])
      #expect(topology.nodes.allSatisfy { $0.cores.allSatisfy { $0.puOSIndices.count == 2 } })
      #expect(topology.nodes[1].cores.map(\.puOSIndices) == [[4, 5], [6, 7]])
      #expect(topology.coreCount == 8)
      #expect(topology.puCount == 16)
      #expect(!topology.support.isThisSystem)
      #expect(!topology.support.canPinThreads)
      #expect(!topology.support.canBindMemory)
    }

    /// A synthetic machine without NUMA objects still gets (hwloc 2 adds) one node.
    @Test func syntheticWithoutNUMALevelIsOneNode() throws {
      let topology = try Topology(source: .synthetic("pack:1 core:3 pu:1"))
      #expect(topology.nodes.count == 1)
      #expect(topology.nodes[0].cores.count == 3)
    }

    /// Unevenly sized nodes (3 + 5 cores) from a hand-written XML file.
    @Test func xmlWithUnevenNodes() throws {
      let topology = try withTemporaryFile(handWrittenXML(coresPerNode: [3, 5])) {
        try Topology(source: .xml(path: $0))
      }
      #expect(topology.nodes.map(\.cores.count) == [3, 5])
      #expect(topology.nodes[0].cores.map(\.osIndex) == [0, 1, 2])
      #expect(topology.nodes[1].cores.map(\.puOSIndices) == [[3], [4], [5], [6], [7]])
      #expect(topology.nodes.map(\.memoryBytes) == [1 << 30, 2 << 30])
      #expect(topology.nodes.map(\.osIndex) == [0, 1])
      #expect(topology.cpuModel == "Hand-written CPU")
      #expect(topology.coreCount == 8)
      #expect(!topology.support.isThisSystem)
      #expect(!topology.support.canPinThreads)
      #expect(!topology.support.canBindMemory)
    }

    /// A memory-only node (no cores) is kept, with no cores; the others are unaffected.
    @Test func xmlWithMemoryOnlyNode() throws {
      let topology = try withTemporaryFile(handWrittenXML(coresPerNode: [2, 2], memoryOnlyNode: true)) {
        try Topology(source: .xml(path: $0))
      }
      #expect(topology.nodes.count == 3)
      #expect(topology.nodes.map(\.cores.count).sorted() == [0, 2, 2])
      #expect(topology.coreCount == 4)
      let plan = try WorkerPool.plan(nodes: topology.nodes, threads: 0)
      #expect(plan.count == 4)
      let memoryOnly = topology.nodes.filter { $0.cores.isEmpty }.map(\.logicalIndex)
      #expect(plan.allSatisfy { !memoryOnly.contains($0.node) })
    }

    @Test func badSourcesThrow() throws {
      expectMoEError { _ = try Topology(source: .synthetic("pack:2 [numa] gizmo:3")) }
      expectMoEError { _ = try Topology(source: .synthetic("")) }
      expectMoEError { _ = try Topology(source: .xml(path: "/nonexistent/moecore-topology.xml")) }
      try withTemporaryFile("this is not <xml") { path in
        expectMoEError { _ = try Topology(source: .xml(path: path)) }
      }
    }

    @Test func systemTopology() throws {
      let topology = try Topology()
      #expect(topology.source == .system)
      #expect(topology.nodes.count >= 1)
      #expect(topology.coreCount >= 1)
      #expect(topology.puCount >= topology.coreCount)
      // Every core belongs to exactly one node.
      let cores = topology.nodes.flatMap(\.cores).map(\.logicalIndex)
      #expect(cores.sorted() == Array(0..<topology.coreCount))
    }

    // MARK: Memory

    @Test func allocationOnSyntheticTopologyIsUnbound() throws {
      let topology = try Topology(source: .synthetic("pack:2 [numa] core:2 pu:1"))
      for node in [0, 1, nil] as [Int?] {
        let memory = try topology.allocate(bytes: 3 << 20, node: node)
        #expect(memory.bytes == 3 << 20)
        #expect(memory.node == node)
        #expect(!memory.bound)
        #expect(Int(bitPattern: memory.pointer) % 4096 == 0)
        memset(memory.pointer, 0x5A, memory.bytes)
        let last = memory.pointer.load(fromByteOffset: memory.bytes - 1, as: UInt8.self)
        #expect(last == 0x5A)
      }
      let interleaved = try topology.allocateInterleaved(bytes: 1 << 16)
      #expect(!interleaved.bound)
      #expect(interleaved.node == nil)
      memset(interleaved.pointer, 1, interleaved.bytes)

      expectMoEError { _ = try topology.allocate(bytes: 16, node: 2) }
      expectMoEError { _ = try topology.allocate(bytes: -1, node: nil) }
      let empty = try topology.allocate(bytes: 0, node: 0)
      #expect(empty.bytes == 0)
    }

    @Test func allocationOnSystemTopology() throws {
      let topology = try Topology()
      let memory = try topology.allocate(bytes: 1 << 20, node: 0)
      #expect(Int(bitPattern: memory.pointer) % 4096 == 0)
      memset(memory.pointer, 0x7F, memory.bytes)
      #expect(memory.pointer.load(fromByteOffset: memory.bytes - 1, as: UInt8.self) == 0x7F)
      // Bound exactly when hwloc says binding works here (a strict allocation may still
      // fall back, so "bound" implies "can bind", not the reverse).
      if memory.bound { #expect(topology.support.canBindMemory) }
      let interleaved = try topology.allocateInterleaved(bytes: 1 << 20)
      memset(interleaved.pointer, 0, interleaved.bytes)
      if interleaved.bound { #expect(topology.support.canInterleaveMemory) }
    }
  }
}

// MARK: - Worker placement

extension RuntimeTests {
  @Suite struct WorkerPlanTests {
    @Test func oneWorkerPerCoreByDefault() throws {
      let topology = try Topology(source: .synthetic("pack:2 [numa] l3:1 core:4 pu:1"))
      let plan = try WorkerPool.plan(nodes: topology.nodes, threads: 0)
      expectWellFormed(plan)
      #expect(plan.count == 8)
      #expect(plan.map(\.node) == [0, 0, 0, 0, 1, 1, 1, 1])
      #expect(plan.map(\.coreOSIndex) == Array(0..<8))
      #expect(plan.map(\.puOSIndex) == Array(0..<8))
    }

    /// Fewer workers than cores: proportional per node, a node's first cores.
    @Test func fewerWorkersThanCores() throws {
      let twoByFour = nodes(coresPerNode: [4, 4])
      let two = try WorkerPool.plan(nodes: twoByFour, threads: 2)
      expectWellFormed(two)
      #expect(two.map(\.node) == [0, 1])
      #expect(two.map(\.coreOSIndex) == [0, 4])
      let four = try WorkerPool.plan(nodes: twoByFour, threads: 4)
      #expect(four.map(\.coreOSIndex) == [0, 1, 4, 5])
      let one = try WorkerPool.plan(nodes: twoByFour, threads: 1)
      #expect(one.map(\.coreOSIndex) == [0])
      let three = try WorkerPool.plan(nodes: twoByFour, threads: 3)
      #expect(workersPerNode(three, nodeCount: 2) == [2, 1])  // remainders tie: lower node
    }

    /// 3 + 5 cores: largest remainder, ties to the lower node.
    @Test func unevenNodes() throws {
      let uneven = nodes(coresPerNode: [3, 5])
      let expected: [Int: [Int]] = [1: [0, 1], 2: [1, 1], 3: [1, 2], 4: [2, 2], 5: [2, 3],
                                    6: [2, 4], 7: [3, 4], 8: [3, 5], 16: [6, 10]]
      for (threads, split) in expected {
        let plan = try WorkerPool.plan(nodes: uneven, threads: threads)
        expectWellFormed(plan)
        #expect(workersPerNode(plan, nodeCount: 2) == split, "threads \(threads)")
        // Distinct cores while cores remain on the node.
        for node in 0..<2 where split[node] <= uneven[node].cores.count {
          let cores = plan.filter { $0.node == node }.map(\.coreOSIndex)
          #expect(Set(cores).count == cores.count, "threads \(threads) node \(node)")
        }
      }
      // 4 workers: node 0 takes cores 0, 1 of {0, 1, 2}; node 1 cores 3, 4 of {3...7}.
      let four = try WorkerPool.plan(nodes: uneven, threads: 4)
      #expect(four.map(\.coreOSIndex) == [0, 1, 3, 4])
    }

    /// The same rule from a loaded XML topology.
    @Test func unevenNodesFromXML() throws {
      let topology = try withTemporaryFile(handWrittenXML(coresPerNode: [3, 5])) {
        try Topology(source: .xml(path: $0))
      }
      let plan = try WorkerPool.plan(nodes: topology.nodes, threads: 4)
      #expect(plan.map(\.node) == [0, 0, 1, 1])
      #expect(plan.map(\.puOSIndex) == [0, 1, 3, 4])
    }

    /// A small node may get no worker at all: shares are proportional, not minimum-one.
    @Test func smallNodeMayGetNoWorker() throws {
      let plan = try WorkerPool.plan(nodes: nodes(coresPerNode: [1, 15]), threads: 2)
      #expect(workersPerNode(plan, nodeCount: 2) == [0, 2])
      #expect(plan.map(\.node) == [1, 1])
    }

    /// More workers than cores: wrap round the node's cores, SMT siblings first.
    @Test func moreWorkersThanCoresWrap() throws {
      let smt = nodes(coresPerNode: [2, 2, 2, 2], pusPerCore: 2)
      let sixteen = try WorkerPool.plan(nodes: smt, threads: 16)
      expectWellFormed(sixteen)
      #expect(workersPerNode(sixteen, nodeCount: 4) == [4, 4, 4, 4])
      #expect(Set(sixteen.map(\.puOSIndex)).count == 16)  // every PU used once
      #expect(sixteen.prefix(4).map(\.coreOSIndex) == [0, 1, 0, 1])
      #expect(sixteen.prefix(4).map(\.puOSIndex) == [0, 2, 1, 3])

      let single = nodes(coresPerNode: [2, 2])
      let ten = try WorkerPool.plan(nodes: single, threads: 10)
      expectWellFormed(ten)
      #expect(workersPerNode(ten, nodeCount: 2) == [5, 5])
      #expect(ten.prefix(5).map(\.coreOSIndex) == [0, 1, 0, 1, 0])
      #expect(ten.prefix(5).map(\.puOSIndex) == [0, 1, 0, 1, 0])
    }

    @Test func memoryOnlyNodesGetNoWorkers() throws {
      var list = nodes(coresPerNode: [0, 3])
      list.append(TopologyNode(logicalIndex: 2, osIndex: 2, memoryBytes: 1 << 30, cores: []))
      let plan = try WorkerPool.plan(nodes: list, threads: 0)
      #expect(plan.map(\.node) == [1, 1, 1])
      let more = try WorkerPool.plan(nodes: list, threads: 7)
      #expect(more.allSatisfy { $0.node == 1 })
    }

    @Test func invalidRequestsThrow() {
      expectMoEError { _ = try WorkerPool.plan(nodes: nodes(coresPerNode: [2]), threads: -1) }
      expectMoEError { _ = try WorkerPool.plan(nodes: nodes(coresPerNode: [2]), threads: WorkerPool.maximumThreads + 1) }
      expectMoEError { _ = try WorkerPool.plan(nodes: [], threads: 0) }
      expectMoEError { _ = try WorkerPool.plan(nodes: nodes(coresPerNode: [0, 0]), threads: 2) }
    }

    /// Sweep: the split always sums to the request and stays within one of the exact share.
    @Test func apportionSweep() {
      var rng = Rng(seed: 11)
      for _ in 0..<500 {
        let weights = (0..<Int(rng.next() % 6 + 1)).map { _ in Int(rng.next() % 9) }
        guard weights.reduce(0, +) > 0 else { continue }
        let total = Int(rng.next() % 64)
        let parts = WorkerPool.apportion(total, weights: weights)
        #expect(parts.reduce(0, +) == total)
        let weightSum = Double(weights.reduce(0, +))
        for (part, weight) in zip(parts, weights) {
          #expect(abs(Double(part) - Double(total) * Double(weight) / weightSum) < 1)
        }
      }
    }
  }
}

// MARK: - Worker pool

/// Per-worker counters written by workers, read by the test after `run` returns.
private final class Tally: @unchecked Sendable {
  let counts: UnsafeMutableBufferPointer<Int>
  init(_ count: Int) {
    counts = .allocate(capacity: count)
    counts.initialize(repeating: 0)
  }
  deinit { counts.deallocate() }
}

/// Counts bodies running at once, and how often more ran than one call has workers.
private final class OverlapGauge: Sendable {
  let inside = Atomic<Int>(0)
  let overlaps = Atomic<Int>(0)
}

extension RuntimeTests {
  @Suite(.serialized) struct WorkerPoolTests {
    /// Every worker runs the body exactly once per call, over many calls (a lost wake-up
    /// hangs, a double run or a missed worker shows in the counts).
    @Test func everyWorkerRunsOncePerCall() throws {
      let pool = try WorkerPool(topology: Topology(), threads: 2)
      #expect(pool.count == 2)
      #expect(pool.pinned.count == 2)
      let tally = Tally(pool.count)
      var mismatches = 0
      for call in 1...1000 {
        pool.run { worker in tally.counts[worker] += 1 }
        if tally.counts.contains(where: { $0 != call }) { mismatches += 1 }
      }
      #expect(mismatches == 0)
      #expect(Array(tally.counts) == [1000, 1000])
    }

    /// Dispatches separated by pauses longer than the spin time exercise the sleeping
    /// path of the workers and of the caller.
    @Test func sleepingWorkersWakeUp() throws {
      let pool = try WorkerPool(topology: Topology(), threads: 2)
      let tally = Tally(pool.count)
      for call in 1...20 {
        usleep(call % 2 == 0 ? 300 : 2_000)
        pool.run { worker in
          if call % 3 == 0 { usleep(500) }  // the caller gives up spinning and sleeps
          tally.counts[worker] += 1
        }
      }
      #expect(Array(tally.counts) == [20, 20])
    }

    /// Each worker index runs on its own thread, the same thread every time; the caller's
    /// thread runs index 0 exactly when the pool says so, and no other index.
    @Test func workersAreDistinctStableThreads() throws {
      let pool = try WorkerPool(topology: Topology(), threads: 3, pin: false)
      #expect(pool.pinned == [false, false, false])
      let first = Tally(pool.count)
      let second = Tally(pool.count)
      pool.run { first.counts[$0] = Int(bitPattern: UInt(pthread_self())) }
      pool.run { second.counts[$0] = Int(bitPattern: UInt(pthread_self())) }
      #expect(Array(first.counts) == Array(second.counts))
      #expect(Set(first.counts).count == 3)
      let caller = Int(bitPattern: UInt(pthread_self()))
      #expect((first.counts[0] == caller) == pool.callerRunsWorkerZero)
      #expect(!first.counts[1...].contains(caller))
    }

    /// With one worker per CPU on one node, the caller runs worker 0's share (a waiting
    /// caller would take a CPU from a worker at every dispatch), every index still runs
    /// once per call, and results do not depend on which thread ran an index.
    @Test func callerRunsWorkerZeroWhenWorkersFillTheCPUs() throws {
      let topology = try Topology()
      let cpus = min(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))), max(1, topology.puCount))
      let pool = try WorkerPool(topology: topology, threads: cpus)
      #expect(pool.callerRunsWorkerZero == (Set(pool.workers.map(\.node)).count == 1))
      let one = try WorkerPool(topology: topology, threads: 1, pin: false)
      #expect(one.callerRunsWorkerZero == (cpus == 1))
      let tally = Tally(pool.count)
      let sums = Tally(pool.count)
      for call in 0..<200 {
        pool.run { w in
          tally.counts[w] += 1
          sums.counts[w] += call * (w + 1)
        }
      }
      #expect(tally.counts.allSatisfy { $0 == 200 })
      #expect((0..<pool.count).allSatisfy { sums.counts[$0] == 199 * 200 / 2 * ($0 + 1) })
      var ranOn: pthread_t = pthread_self()
      pool.run { w in if w == 0 { ranOn = pthread_self() } }
      #expect((pthread_equal(ranOn, pthread_self()) != 0) == pool.callerRunsWorkerZero)
    }

    /// Two threads calling `run` at once are serialized, not deadlocked or interleaved.
    @Test func concurrentCallersAreSerialized() throws {
      let pool = try WorkerPool(topology: Topology(), threads: 2)
      let tally = Tally(pool.count)
      let gauge = OverlapGauge()
      let callsPerThread = 300
      let callers = (0..<2).map { _ in
        BackgroundThread {
          for _ in 0..<callsPerThread {
            pool.run { worker in
              // Both workers of one call are inside together; a second call would make 3+.
              if gauge.inside.wrappingAdd(1, ordering: .relaxed).newValue > pool.count {
                gauge.overlaps.wrappingAdd(1, ordering: .relaxed)
              }
              tally.counts[worker] += 1
              gauge.inside.wrappingSubtract(1, ordering: .relaxed)
            }
          }
        }
      }
      for caller in callers { #expect(caller.start()) }
      for caller in callers { caller.join() }
      #expect(gauge.overlaps.load(ordering: .relaxed) == 0)
      #expect(Array(tally.counts) == [2 * callsPerThread, 2 * callsPerThread])
    }

    /// One worker still runs on its own thread; more workers than cores wrap.
    @Test func singleAndOversubscribedPools() throws {
      let topology = try Topology()
      let single = try WorkerPool(topology: topology, threads: 1)
      var ranOn: pthread_t = pthread_self()
      single.run { _ in ranOn = pthread_self() }
      #expect((pthread_equal(ranOn, pthread_self()) != 0) == single.callerRunsWorkerZero)

      let threads = topology.coreCount * 2 + 1
      let wide = try WorkerPool(topology: topology, threads: threads)
      #expect(wide.count == threads)
      let tally = Tally(wide.count)
      for _ in 0..<50 { wide.run { tally.counts[$0] += 1 } }
      #expect(tally.counts.allSatisfy { $0 == 50 })
    }

    /// On a synthetic topology the pool works, but no pin takes effect.
    @Test func poolOnSyntheticTopologyIsUnpinned() throws {
      let topology = try Topology(source: .synthetic("pack:2 [numa] core:2 pu:1"))
      let pool = try WorkerPool(topology: topology)
      #expect(pool.count == 4)
      #expect(pool.pinned == [false, false, false, false])
      #expect(pool.workers(onNode: 0) == [0, 1])
      #expect(pool.workers(onNode: 1) == [2, 3])
      #expect(pool.workers(onNode: 2) == [])
      let tally = Tally(pool.count)
      pool.run { tally.counts[$0] += 1 }
      #expect(Array(tally.counts) == [1, 1, 1, 1])
    }

    /// On this machine pinning works when hwloc says it does.
    @Test func pinningOnSystemTopology() throws {
      let topology = try Topology()
      let pool = try WorkerPool(topology: topology, threads: 1)
      if !topology.support.canPinThreads { #expect(pool.pinned == [false]) }
      // A pin to a PU that does not exist never succeeds.
      #expect(!topology.pinCurrentThread(puOSIndex: -1))
    }
  }
}

// MARK: - BLAS

extension RuntimeTests {
  @Suite struct BLASTests {
    @Test func reportsItsConfiguration() {
      #expect(!BLAS.coreName.isEmpty)
      #expect(BLAS.config.contains("OpenBLAS"))
      #expect(BLAS.threads >= 1)
      let environment = getenv("OPENBLAS_CORETYPE").map { String(cString: $0) }
      #expect(BLAS.coreTypeEnvironment == environment)
    }
  }
}
