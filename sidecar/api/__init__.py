"""The gRPC surface and the running process: servicers, answers, decoding, auth, health. May import every
package below (queue, observe, delivery, trengo_api, config, plan, state, the kernel).
"""
