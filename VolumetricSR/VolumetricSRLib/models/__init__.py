"""Networks and what describes them: the architecture registry, configs (torch-free), TVSRN, the CNN
baselines, model cards and weight files. Imports only the core's top-level modules."""
