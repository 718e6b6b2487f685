print("vlm")
