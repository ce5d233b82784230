"""Tools around the pipeline, not steps of it: the simulator, the Event Hubs sender and the readings importer."""
