"""Binary translation, the VMware answer (issue 9, being built): guest code never runs as written.
``classify`` decides what each instruction becomes, ``translator`` turns a guest basic block into
code for the translation cache, ``cache`` places blocks, chains them and resolves indirect
branches with a lookup stub written in x86, and ``technique`` is the ``bt`` technique that runs
guests with them (runnable by name, listed as being built). docs/architecture.md, "Binary
translation", has the design and what is not built yet.
"""
