"""placeholder"""
def add_ladder_parser(sub): sub.add_parser("ladder")
