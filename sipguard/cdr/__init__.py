"""CDRs (SPEC §6): the record (:mod:`.record`, no I/O), sinks behind one small interface
(:mod:`.sink`: :mod:`.file_sink`, :mod:`.postgres_sink` with its :mod:`.spool`), the writer
that keeps them off the event loop (:mod:`.writer`), crash recovery (:mod:`.recovery`),
retention (:mod:`.retention`) and the command-line export and purge (:mod:`.admin`)."""
