"""Mutations guarding issue 14 (fast start, threads, the master benchmark, bounded memory), caught by
tests/test_speed.py and tests/test_master_segments.py (see tests/mutations.py for the format)."""

from mutations import Mutation

SPEED = "tests/test_speed.py"

MUTATIONS = [
    # fast start: commands that need no model never import torch
    Mutation("speed-params-imports-torch", "cmd_params", "if args.json:", "if __import__('torch') and args.json:",
             (f"{SPEED}::test_model_free_commands_start_without_torch",),
             "`refmaster params` loads torch (3 s) to print a table", module="bridge/cli/chain.py"),
    Mutation("speed-bench-module-imports-torch", "register", 'b = bsub.add_parser("chain"',
             '__import__("torch"); b = bsub.add_parser("chain"',
             (f"{SPEED}::test_model_free_commands_start_without_torch",),
             "a bench module loads torch when it registers, so every `--help` does", module="bridge/bench/chain.py"),
    Mutation("speed-numba-compiles-every-process", "_cache_compiled_recursion", "compressor_kernel.enable_caching()",
             "pass",
             (f"{SPEED}::test_the_compiled_compressor_loop_is_loaded_from_a_cache_in_the_next_process",),
             "every process compiles torchcomp's loop again (2.4 s)"),
    # threads
    Mutation("speed-free-threads-ignore-busy-cores", "free_threads", "cores - taken", "cores",
             (f"{SPEED}::test_free_threads_leave_the_busy_cores_to_the_others",),
             "the automatic thread count ignores the cores other processes keep busy"),
    Mutation("speed-busy-counts-our-own-work", "busy_elsewhere", " - (now.own_cpu - since.own_cpu)", "",
             (f"{SPEED}::test_busy_elsewhere_is_the_machines_busy_time_less_our_own",),
             "our own decoding counts as another process's load (one thread on an idle machine)"),
    Mutation("speed-niced-load-always-ignored", "busy_elsewhere", "if _niced():", "if False:",
             (f"{SPEED}::test_busy_elsewhere_is_the_machines_busy_time_less_our_own",),
             "a niced refmaster ignores the niced jobs it competes with on equal terms"),
    Mutation("speed-set-threads-leaves-torch", "set_threads", "torch.set_num_threads(n)", "torch.get_num_threads()",
             (f"{SPEED}::test_set_threads_sizes_torch_and_numba", f"{SPEED}::test_master_threads_option_is_the_thread_count_it_masters_with"),
             "the thread choice never reaches torch"),
    Mutation("speed-set-threads-leaves-numba", "set_threads", "numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))",
             "numba.get_num_threads()",
             (f"{SPEED}::test_set_threads_sizes_torch_and_numba",),
             "torchcomp's parallel loop keeps one thread per core"),
    Mutation("speed-master-ignores-threads-option", "cmd_master", "choice = use_threads(threads)", "choice = use_threads(None)",
             (f"{SPEED}::test_master_threads_option_is_the_thread_count_it_masters_with",),
             "`master --threads N` is ignored"),
    Mutation("speed-threads-option-unchecked", "check_threads", "not 1 <= requested <= MAX_THREADS", "requested < -1000",
             (f"{SPEED}::test_threads_option_is_checked_before_any_work",),
             "--threads 0 or 100000 is accepted"),
    # the benchmark
    Mutation("speed-bench-peak-from-getrusage", "run_measured", "int(peak.read_text()) / 1024.0",
             "__import__('resource').getrusage(__import__('resource').RUSAGE_CHILDREN).ru_maxrss / 1024.0",
             (f"{SPEED}::test_bench_measures_the_childs_own_peak_memory",),
             "the benchmark's peak memory is getrusage's, which carries the benchmark's own peak into the child"),
    Mutation("speed-bench-pairs-a-song-with-itself", "song_pairs", "(p for p in length if p != i)", "(p for p in length)",
             (f"{SPEED}::test_bench_pairs_are_different_songs_with_inputs_of_two_to_four_minutes",),
             "bench master masters a song towards itself"),
    Mutation("speed-bench-any-length-input", "song_pairs", "if lo <= length[p] <= hi]", "]",
             (f"{SPEED}::test_bench_pairs_are_different_songs_with_inputs_of_two_to_four_minutes",),
             "bench master takes inputs of any length"),
    Mutation("speed-bench-burner-sleeps", "Burner.__enter__", '[sys.executable, "-c", BURNER, str(self.seconds)]',
             '[sys.executable, "-c", "import time; time.sleep(60)"]',
             (f"{SPEED}::test_bench_burner_keeps_a_core_busy_until_the_block_ends",),
             "--contend's burner keeps no core busy"),
    Mutation("speed-bench-burner-left-running", "Burner.__exit__", "self.proc.terminate()", "return",
             (f"{SPEED}::test_bench_burner_keeps_a_core_busy_until_the_block_ends",),
             "--contend's burner outlives the measured run"),
]
