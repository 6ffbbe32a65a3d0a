"""Benchmarks, measured on this machine in one run: ``spatialflow bench`` prints them as tables
and writes JSON; ``benchmarks/`` has the scripts. One module per concern:

- :mod:`~spatialflow.benchmark.timing`: median times, time per stage, peak memory, machine info;
- :mod:`~spatialflow.benchmark.machine`: the machine's convolution rate (the GFLOP/s yardstick);
- :mod:`~spatialflow.benchmark.models`: the measured models (SpatialFlow variants with random
  weights, torchvision's peers);
- :mod:`~spatialflow.benchmark.inference`: inference speed next to the peers (Table XI);
- :mod:`~spatialflow.benchmark.training`: training throughput and memory;
- :mod:`~spatialflow.benchmark.quality`: quality after N minutes of training, evaluation time;
- :mod:`~spatialflow.benchmark.memorisation`: the memorisation check on two real images;
- :mod:`~spatialflow.benchmark.info`: the text of ``spatialflow info --model``.

No model code imports this package. FLOPs are counted by
:func:`spatialflow.model.summary.count_flops`, the counter ``spatialflow info`` uses too.
"""
