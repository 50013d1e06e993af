"""Integrations: real signals in (OpenADR, grid prices, hashprice, GPU telemetry) and real
actuators out (miners, GPU schedulers), each optional at install time.

Every adapter imports its third-party library inside the functions that need it, so
``import adapters.<name>`` always works; a missing library raises
:class:`adapters.common.MissingExtraError` naming the ``pip install 'wattmix[extra]'`` to run.

========================  ==========================================  =================
module                    what                                        extra
========================  ==========================================  =================
adapters.openadr          OpenADR 2.0b VEN -> DemandResponseEvent      ``openadr``
adapters.gpu              DCGM-exporter / NVML / nvidia-smi -> GPU      ``nvml`` (NVML only)
adapters.hashprice        hashprice from chain + market data; index   (none: aiohttp)
adapters.grid             ERCOT RT/DA price poller, new intervals     (none: aiohttp)
adapters.miners           miner fleets: cgminer/LuxOS API or pyasic   ``miners`` (pyasic only)
adapters.miner_sim        a simulated miner (LuxOS / BOSminer API)    (none)
adapters.gpujobs          Slurm / Kubernetes GPU jobs: pause, caps    (none)
adapters.actuator         the actions consumer + actuation reports    (none)
adapters.actuator_config  ``wattmix actuator``'s TOML -> applier      (none)
adapters.metrics          Prometheus registry + aiohttp routes         (none: aiohttp)
========================  ==========================================  =================
"""
