"""One run of the benchmark, as a graph of stages (taskvec.protocol executes it, or prints it
for a dry run). One module per concern, lowest first:

- `stages`: the graph machinery (Stage, Graph, ResultKey, execute), knows nothing of taskvec's work;
- `plan`: what stages need and the dry run's listing;
- `rundir`: a run directory's paths, its lock, and the check that it holds a run of the same config;
- `setup`: a config's backbone, prepared tasks and heads (also for the CLI and the Python API);
- `context`: what stages compute with (RunContext), and the contexts of sub-runs;
- `keys`: the stage keys, with the types of their results;
- `evaluations`, `analyses`, `reporting`: the stages' computations;
- `graph`: `build_graph`, the benchmark's stages in order;
- `session`: a command's process (torchrun's process group, threads).
"""
