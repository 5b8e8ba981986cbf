# A CYaRon generator for "print a + b": one input line "a b", 0 <= a <= 100, 0 <= b <= 10**6.
from cyaron import randint

print(randint(0, 100), randint(0, 10**6))
