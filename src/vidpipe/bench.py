"""placeholder"""
def add_bench_parser(sub): sub.add_parser("bench")
