"""mcrnn"""
