"""The Faust worker: `create_app(settings)` builds the app that runs the decision core on the log.

- `app`: the app, topics, tables, agents, read top to bottom;
- `agents`: one `register_*(app, runtime, …)` per agent, task and timer;
- `views`: the web views (a pass's state, metrics, keys, checkpoints);
- `runtime`: what they share (`Runtime`) and how one event is handled;
- `tables`: raw-bytes topics and the tables written straight to their stores;
- `reference`: whole topics read outside the consumer group (the reference data at start);
- `eos`: what exactly_once needs beside Faust's own (the commit gate);
- `compat`: every touch of Faust and aiokafka internals, each with a premise test.

Importing the package loads nothing: the dashboard, the operators' commands and the audit import
`compat` or `reference` without building the Faust app.
"""
