"""ewoks tasks of dfxm-online (entry point `ewoks.tasks.class`): thin wrappers over the
stages of workflow/stages.py, one task per stage."""
